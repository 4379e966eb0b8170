"""The BatchNorm mode used while a defense generates its training-time adversarial examples.

Each method's reference fixes it (notes/algorithms.md Sec. 13); it is an explicit parameter, never
an accident of whatever mode the model was left in.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the block with ``model.train()`` (mode "train") or ``model.eval()`` ("eval"), then restore."""
    was = model.training
    model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was)
