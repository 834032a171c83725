#!/bin/sh
# The image's build step (Dockerfile, builder stage): train the model zoo, fold and export every model into
# the model repository OUT_DIR with `bnfold build-default`, then re-run every entry's checks with
# `bnfold verify`. Any failed check exits non-zero, which fails the image build.
#   scripts/build-repository.sh OUT_DIR
set -eu

out="${1:-}"
if [ -z "$out" ]; then
  echo "build-repository.sh: missing OUT_DIR; usage: scripts/build-repository.sh OUT_DIR" >&2
  exit 2
fi
bnfold build-default --out "$out"

count="$("$(dirname "$0")/verify-repository.sh" "$out")"
if [ "$count" -eq 0 ]; then
  echo "build-repository.sh: bnfold build-default wrote no model into $out" >&2
  exit 1
fi
echo "build-repository.sh: $count models built and verified in $out"
