"""bnfold's model side: the trained zoo, population statistics, fold-and-export into a model repository.

Nothing is imported here, so that `bnfold verify` / `bnfold inspect` (bnfold.cli.entry) run without torch.
One subpackage per concept:

    models.zoo       the four zoo nets: architectures, data, training, the weights cache, the default repository
    models.recalibrate  population statistics for inference-time BatchNorm
    models.export    SPEC → fold → export both → verify → write REPO_DIR/NAME atomically (and re-check an entry)
    models.pt2       the allow-list that a .pt2 archive is checked against before torch.export.load
    models.errors    the error types every part raises (BadInputError, VerificationError)
    models.progress  the progress lines the long-running steps print
"""
