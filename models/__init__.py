"""bnfold's model side: the trained zoo, population statistics, fold-and-export into a model repository.

Nothing is imported here, so that `bnfold verify` / `bnfold inspect` (models.entry_cli) run without torch.

    models.zoo                 the four zoo nets, trained or read from the weights cache (models.cache)
    models.recalibrate         population statistics for inference-time BatchNorm
    models.fold_and_export     SPEC → fold → export both → verify → write REPO_DIR/NAME atomically
    models.default_repository  every zoo model (bnfold build-default; the tests' zoo_repository fixture)
    models.entry_check         re-run the checks on a written entry (torch-free)
    models.repository          write/read entries of docs/repository-format.md (torch-free)
    models.cli                 the `bnfold` command dispatcher
"""
