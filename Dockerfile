# syntax=docker/dockerfile:1
# bnfold image, two stages:
#   builder  PyTorch (CPU build) + ONNX tooling: trains the model zoo and folds, exports and verifies the
#            default model repository at build time; also the image of docker-compose's one-shot `fold`.
#   runtime  (the default target) onnxruntime + FastAPI only, no PyTorch: serves the repository built above
#            with `bnfold serve`, configured by BNFOLD_* environment variables.
# Build: docker build -t bnfold .      Run: docker run -p 8000:8000 -e BNFOLD_API_KEY=... bnfold
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# PyTorch on PyPI is the CUDA build; the CPU build comes from PyTorch's own index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BNFOLD_REPOSITORY=/models
# The fold service runs PyTorch as this user, which may want a writable home (caches): give it one.
RUN python -m venv /opt/venv \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/bnfold --shell /usr/sbin/nologin bnfold \
    && install -d -o bnfold -g bnfold /models
WORKDIR /opt/bnfold
# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
COPY scripts/install-deps.sh ./scripts/
RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" scripts/install-deps.sh fold
# Then the source, installed without touching the dependencies.
COPY README.md ./
COPY bnfold/ ./bnfold/
COPY contract/ ./contract/
COPY folding/ ./folding/
COPY models/ ./models/
COPY cli/ ./cli/
COPY service/ ./service/
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
COPY scripts/ ./scripts/
# Train the zoo, fold and export every model, verify every entry (a failed check fails the build).
RUN scripts/build-repository.sh /opt/bnfold/default-repository \
    && chown -R bnfold:bnfold /opt/bnfold/default-repository
USER 10001:10001
CMD ["/opt/bnfold/scripts/fold.sh"]

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BNFOLD_REPOSITORY=/models \
    BNFOLD_HOST=0.0.0.0 \
    BNFOLD_PORT=8000
RUN python -m venv /opt/venv \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin bnfold
WORKDIR /opt/bnfold
COPY pyproject.toml ./
COPY scripts/install-deps.sh ./scripts/
RUN scripts/install-deps.sh serve
COPY README.md ./
COPY bnfold/ ./bnfold/
COPY contract/ ./contract/
COPY folding/ ./folding/
COPY models/ ./models/
COPY cli/ ./cli/
COPY service/ ./service/
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info
COPY scripts/ ./scripts/
COPY --from=builder --chown=bnfold:bnfold /opt/bnfold/default-repository /models
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/bnfold/scripts/healthcheck.py"]
CMD ["/opt/bnfold/scripts/serve.sh"]
