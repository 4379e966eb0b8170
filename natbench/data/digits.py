"""scikit-learn's bundled handwritten digits (UCI ML hand-written digits test set, Alpaydin &
Kaynak 1998): 1797 real 8x8 grey images with values 0..16, ten classes. Shipped inside
scikit-learn, so it needs no download: natbench's embedded default task.

There is no official train/test split: :func:`read` makes a fixed, stratified one from
``split_seed`` (independent of the run's seed), so every run sees the same test set.
"""
from __future__ import annotations

import numpy as np
import torch

from . import TensorSplits, stratified_pick


def read(root=None, *, test_fraction: float = 0.2, split_seed: int = 0) -> TensorSplits:
    """Load the digits and split them (stratified) into a train pool and a test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    test_idx = stratified_pick(d.target, test_fraction, split_seed)
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    return TensorSplits(x[mask], y[mask], x[test_idx], y[test_idx], [str(i) for i in range(10)])
