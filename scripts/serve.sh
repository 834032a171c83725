#!/bin/sh
# The runtime image's command: serve the model repository with `bnfold serve`.
# Configuration comes from BNFOLD_* environment variables (BNFOLD_REPOSITORY, BNFOLD_HOST, BNFOLD_PORT,
# BNFOLD_API_KEY, ...: `bnfold serve --help` lists them all); extra arguments are passed to `bnfold serve`.
set -eu

repository="${BNFOLD_REPOSITORY:?set BNFOLD_REPOSITORY to the model repository directory}"
if ! ls "$repository"/*/model.json >/dev/null 2>&1; then
  echo "serve.sh: no model in $repository (no */model.json); build one with scripts/build-repository.sh $repository" >&2
  exit 2
fi
if [ -z "${BNFOLD_API_KEY:-}" ]; then
  echo "serve.sh: warning: BNFOLD_API_KEY is not set, so the API needs no token; set it to require one" >&2
fi
exec bnfold serve "$@"
