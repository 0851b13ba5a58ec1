"""scikit-learn's digits: 1,797 real 8x8 grey images of handwritten digits, shipped inside scikit-learn."""
from __future__ import annotations

import torch

from bsnet.data.base import DataSplits, Split, stratified_split


def load_digits_splits(val_size: float | int = 0.1, seed: int = 0, test_size: float = 0.2) -> DataSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("the digits data set needs scikit-learn: pip install 'bsnet[cli]'") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    # A fixed test split (seed 0 whatever the run's seed) so that runs are compared on the same images.
    train_idx, test_idx = stratified_split(y, test_size, seed=0)
    rest_idx, val_idx = stratified_split(y[train_idx], val_size, seed=seed)
    train_idx, val_idx = train_idx[rest_idx], train_idx[val_idx]
    mean, std = x[train_idx].mean(), x[train_idx].std()  # the training set's statistics only
    x = (x - mean) / std
    return DataSplits("digits", Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx]),
                      Split(x[test_idx], y[test_idx]), num_classes=10)
