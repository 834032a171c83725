"""bnfold: fold inference-time BatchNorm into neighbouring layers, prove it, and serve both variants.

Everything bnfold installs lives under this one import name, so its packages never shadow (or are shadowed by)
a user's own `models`, `service` or `cli` package:

    bnfold.folding   the folding engines (PyTorch and ONNX)              folding/
    bnfold.contract  the model repository contract, torch-free            contract/
    bnfold.models    the zoo, recalibration and fold-and-export            models/
    bnfold.service   the inference service (no torch, no folding)          service/
    bnfold.cli       the `bnfold` command                                  cli/

The folders live at the top of the source tree; this package links them under one name.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bnfold")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
