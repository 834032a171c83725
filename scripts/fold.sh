#!/bin/sh
# docker compose's one-shot `fold` service (the builder image's command): make the shared volume
# $BNFOLD_REPOSITORY a complete, verified model repository, then exit 0 so that `api` starts.
#   1. every entry of the default repository built into the image ($BNFOLD_DEFAULT_REPOSITORY) that the
#      volume lacks is copied in (to a hidden temporary name, then renamed: readers never see half an entry);
#   2. every model you dropped into $BNFOLD_INCOMING (NAME.onnx, or NAME.pt2 from torch.export.save) whose
#      entry NAME does not exist yet is folded with `bnfold fold-and-export`; an optional NAME.args file holds
#      more fold-and-export options, e.g. `--input-shape 1,3,32,32 --task classification`;
#   3. every entry is verified with `bnfold verify`; any failure exits non-zero and `api` does not start.
# To re-fold a model you changed, delete its entry first: docker compose run --rm fold rm -r /models/NAME
set -eu

repository="${BNFOLD_REPOSITORY:?set BNFOLD_REPOSITORY to the model repository directory (the shared volume)}"
defaults="${BNFOLD_DEFAULT_REPOSITORY:-/opt/bnfold/default-repository}"
incoming="${BNFOLD_INCOMING:-/incoming}"
mkdir -p "$repository"

for source in "$defaults"/*/; do
  [ -f "${source}model.json" ] || continue
  name="$(basename "$source")"
  [ -e "$repository/$name" ] && continue
  cp -R "${source%/}" "$repository/.$name.tmp-$$"
  mv "$repository/.$name.tmp-$$" "$repository/$name"
  echo "fold.sh: added default model $name"
done

for model in "$incoming"/*.onnx "$incoming"/*.pt2; do
  [ -f "$model" ] || continue
  name="$(basename "${model%.*}")"
  if [ -e "$repository/$name" ]; then
    echo "fold.sh: $name is already in the repository; delete $repository/$name to fold $model again"
    continue
  fi
  options=""
  [ -f "$incoming/$name.args" ] && options="$(cat "$incoming/$name.args")"
  # shellcheck disable=SC2086 # the .args file is a list of options, split on purpose
  bnfold fold-and-export --model "$model" --out "$repository" --name "$name" $options
done

count="$("$(dirname "$0")/verify-repository.sh" "$repository")"
if [ "$count" -eq 0 ]; then
  echo "fold.sh: no model in $repository; the image's default repository $defaults is missing or empty" >&2
  exit 1
fi
echo "fold.sh: $count models verified in $repository"
