"""Fold-and-export: a SPEC → a candidate (folded + unfolded ONNX) → verified → a model repository entry.

Nothing is imported here: `repository`, `manifest`, `checks` and `entry_check` are torch-free, so that
`bnfold verify` and `bnfold inspect` run in the serving environment.

    spec_forms       the SPEC forms, parsed once into a Spec value (torch-free)
    spec             a factory's model, --weights, --input-shape and the calibration batch
    sources          a torch Spec (zoo:NAME, factory, .pt2) → LoadedModel
    torch_candidate  LoadedModel → fold with PyTorch → export both variants to ONNX
    onnx_candidate   a .onnx file or a .pt2 program → fold the ONNX graph
    checks           the equivalence and BatchNorm-count checks on a candidate (torch-free)
    publish          verify a candidate and write it as an entry, atomically
    manifest         the entry's manifest.json
    repository       write/read entries of docs/repository-format.md (torch-free)
    entry_check      re-run the checks on a written entry (torch-free)
    fold_and_export  the whole pipeline and its summary
"""
