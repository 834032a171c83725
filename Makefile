# bnfold task runner. `make serve` and `make test` are the two set-up commands of the README; each creates
# the virtualenv it needs (.venv) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPOSITORY ?= model_repository
HOST ?= 127.0.0.1
PORT ?= 8000
# The CPU build of torch lies on some machines' disk; use it when it is there.
PIP_LOCAL := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: serve test lint typecheck pytest repository bench bench-peers bench-tf2onnx clean deploy-tools screenshots

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_LOCAL) -e '.[dev]'
	touch $@

## Build the default model repository from the zoo (reused when already built), then serve it.
serve: repository
	$(BIN)/bnfold serve --repository $(REPOSITORY) --host $(HOST) --port $(PORT)

repository: $(BIN)/.installed
	$(BIN)/bnfold build-default --out $(REPOSITORY)

## The whole test suite: lint, format check, type check, tests.
test: lint typecheck pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check bnfold contract folding models service cli tests bench
	$(BIN)/ruff format --check bnfold contract folding models service cli tests bench

typecheck: $(BIN)/.installed
	$(BIN)/mypy

pytest: $(BIN)/.installed deploy-tools
	$(BIN)/python -m pytest -q

## Debian packages the deploy and UI tests run (nginx, shellcheck, chromium + chromedriver, a compose client); idempotent.
deploy-tools:
	sh scripts/ensure-deploy-tools.sh

## docs/ui-dashboard.png and docs/ui-fold-report.png: builds the default repository (reused), serves it and
## photographs the two pages in headless Chromium.
screenshots: $(BIN)/.installed deploy-tools
	$(BIN)/python -m bench.ui_screenshots --repository $(REPOSITORY) --out docs

bench: $(BIN)/.installed
	$(BIN)/python -m bench.run_all

## bnfold beside the bare ASGI and gRPC floors, a naive FastAPI server, KServe and MLServer (needs wrk and h2load:
## apt-get install -y wrk nghttp2-client;
## KServe and MLServer get virtualenvs of their own under ~/.cache/bnfold/peers on first run).
bench-peers: repository
	$(BIN)/python -m bench.peers --repository $(REPOSITORY)

## Keras models converted by tf2onnx, folded by the bnfold CLI (TensorFlow and tf2onnx get a virtualenv of their own
## under ~/.cache/bnfold/tf2onnx on first run).
bench-tf2onnx: $(BIN)/.installed
	$(BIN)/python -m bench.tf2onnx_check

clean:
	rm -rf $(VENV) $(REPOSITORY) .mypy_cache .ruff_cache .pytest_cache .hypothesis
