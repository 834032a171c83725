#!/bin/sh
# Re-run `bnfold verify` on every entry (a directory with a model.json) of a model repository; shared by
# build-repository.sh (image build) and fold.sh (compose's one-shot service). The checks' own output goes to
# stderr; stdout gets only the number of entries verified. Any failed check exits non-zero.
#   scripts/verify-repository.sh REPO_DIR
set -eu

repository="${1:-}"
if [ -z "$repository" ]; then
  echo "verify-repository.sh: missing REPO_DIR; usage: scripts/verify-repository.sh REPO_DIR" >&2
  exit 2
fi
count=0
for entry in "$repository"/*/; do
  [ -f "${entry}model.json" ] || continue
  bnfold verify "${entry%/}" >&2
  count=$((count + 1))
done
echo "$count"
