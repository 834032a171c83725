#!/bin/sh
# Install bnfold's third-party dependencies (not bnfold itself) into the active Python, straight from
# pyproject.toml, so that a container build can cache them in a layer before the source is copied.
#
#   scripts/install-deps.sh serve   the serving runtime: [project].dependencies only (no PyTorch)
#   scripts/install-deps.sh fold    the above plus the `fold` extra (PyTorch CPU build, ONNX tooling)
#
# Environment:
#   PYTHON           interpreter to install into (default: python3 on PATH)
#   PYPROJECT        path of pyproject.toml (default: the one beside this script's directory)
#   TORCH_INDEX_URL  when set, PyTorch is installed from this index only (the Dockerfile sets the CPU
#                    index); when unset, pip's own configuration decides (e.g. PIP_FIND_LINKS).
set -eu

stage="${1:-}"
case "$stage" in
  serve | fold) ;;
  *) echo "install-deps.sh: expected 'serve' or 'fold', got '${stage}'; usage: install-deps.sh serve|fold" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
pyproject="${PYPROJECT:-$(dirname "$0")/../pyproject.toml}"
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT

"$python" - "$stage" "$pyproject" >"$requirements" <<'PY'
import sys
import tomllib

stage, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as handle:
    project = tomllib.load(handle)["project"]
requirements = list(project["dependencies"])
if stage == "fold":
    requirements += project["optional-dependencies"]["fold"]
print("\n".join(requirements))
PY

pip_install() { "$python" -m pip install --quiet --no-input "$@"; }

torch_requirement="$(grep -E '^torch([=<>!~ ]|$)' "$requirements" || true)"
if [ -n "$torch_requirement" ]; then
  # PyTorch first and alone, so that the CPU index decides which build it is (PyPI's is the CUDA one).
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install --index-url "$TORCH_INDEX_URL" "$torch_requirement"
  else
    pip_install "$torch_requirement"
  fi
fi
pip_install -r "$requirements"
