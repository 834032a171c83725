"""The zoo's datasets: scikit-learn's bundled data with a fixed, stratified held-out split.

- digits: `load_digits`, 1797 grey 8×8 images, pixel values 0…16 scaled to x / 16 ∈ [0, 1], shape (N, 1, 8, 8).
- breast_cancer: `load_breast_cancer`, 569 × 30 raw features (no scaling: the MLP's input BatchNorm1d
  normalises them, which is the point of that BN).

Both are split 80 / 20 with `train_test_split(stratify=y, random_state=0)`: the same split on every machine.
Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """A held-out split; x arrays are float32, y arrays int64 class labels."""

    name: str
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]


def _split(name: str, x: NDArray[np.float32], y: NDArray[np.int64]) -> Split:
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return Split(name, x_train, y_train, x_test, y_test)


def digits_split() -> Split:
    """load_digits as (N, 1, 8, 8) float32 images in [0, 1]."""
    bunch = load_digits()
    images = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
    return _split("digits", images, bunch.target.astype(np.int64))


def breast_cancer_split() -> Split:
    """load_breast_cancer as (N, 30) raw float32 features, labels 0 = malignant, 1 = benign."""
    bunch = load_breast_cancer()
    return _split("breast_cancer", bunch.data.astype(np.float32), bunch.target.astype(np.int64))


DATASETS = {"digits": digits_split, "breast_cancer": breast_cancer_split}


def load_split(name: str) -> Split:
    """The split of a dataset by name ('digits' or 'breast_cancer')."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]()
