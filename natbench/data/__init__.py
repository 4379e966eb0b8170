"""Dataset readers (real on-disk formats) and synthetic fixture writers (the same formats).

Readers return :class:`TensorSplits`: uint8/float image tensors in [0, 1] and int64 labels for a
train pool and a test set; the task carves the validation split from the train pool. Datasets too
large for memory (ImageNet-100) return :class:`FileSplits` instead: image file paths and labels,
which the task decodes per batch. Re-identification data (Market-1501) returns
:class:`natbench.data.market1501.ReIDSplits` (train / query / gallery items with person and camera
ids) and is read by the ``reid`` task kind only; PASCAL VOC returns :class:`natbench.data.voc.VOCSplits`
(annotated images) and is read by the ``detection`` task kind only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class TensorSplits:
    train_x: torch.Tensor  # (N, C, H, W): float32 in [0, 1], or uint8 in 0..255 (the loader scales it)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


@dataclass
class FileSplits:
    """Image files (decoded per batch by the task, never all in memory) and their int64 labels."""

    train_files: list[Path]  # the train pool, in a fixed order (the val split is carved from it)
    train_y: torch.Tensor  # int64 (N,)
    test_files: list[Path]
    test_y: torch.Tensor
    classes: list[str]  # label i is classes[i]
    hint: str = ""  # appended to errors about one file: the expected layout and the fixture command


#: dataset -> "module:function(root, *, test_fraction, split_seed[, class_list]) -> TensorSplits | FileSplits".
#: The task passes ``class_list`` (DataCfg) only to readers that declare it.
READERS = {
    "digits": "natbench.data.digits:read",
    "cifar10": "natbench.data.cifar:read_cifar10",
    "cifar100": "natbench.data.cifar:read_cifar100",
    "imagenet100": "natbench.data.imagenet100:read_imagenet100_files",
    # person re-identification: returns natbench.data.market1501.ReIDSplits (read by the reid task kind)
    "market1501": "natbench.data.market1501:read_market1501",
    # object detection: returns natbench.data.voc.VOCSplits (read by the detection task kind)
    "voc": "natbench.data.voc:read_voc",
}

#: dataset -> "module:function(out_dir) -> Path" writing a synthetic copy in the real on-disk format.
#: The digits set is embedded in scikit-learn and has no on-disk format to imitate.
FIXTURES: dict[str, str] = {
    "cifar10": "natbench.data.cifar:write_cifar10_fixture",
    "cifar100": "natbench.data.cifar:write_cifar100_fixture",
    "imagenet100": "natbench.data.imagenet100:write_imagenet100_full_fixture",
    "market1501": "natbench.data.market1501:write_market1501_fixture",
    "voc": "natbench.data.voc:write_voc_fixture",
    # the published common-corruption test sets (natbench.data.corrupted)
    "cifar10-c": "natbench.data.corrupted:write_cifar10_c_fixture",
    "cifar100-c": "natbench.data.corrupted:write_cifar100_c_fixture",
    "imagenet-c": "natbench.data.corrupted:write_imagenet_c_fixture",
}


def stratified_pick(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``round(fraction * n_c)`` samples of every class c, drawn with ``seed``.

    A non-zero fraction picks at least one sample of each class (small datasets and fixtures would
    otherwise get an empty split).
    """
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(1, int(round(fraction * len(idx))))) if fraction > 0 else 0
        picked.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)
