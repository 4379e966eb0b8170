"""Pieces shared by regularizers."""
from __future__ import annotations

import torch


def cached_logits(model, batch, task, cache: dict, which: str, x: torch.Tensor) -> torch.Tensor:
    """``cache["logits_<which>"]`` when the base (or another regularizer) computed it this step;
    otherwise ``task.logits(model, batch, x)``, stored so composed terms share one forward pass."""
    z = cache.get(f"logits_{which}")
    if z is None:
        z = task.logits(model, batch, x)
        cache[f"logits_{which}"] = z
    return z
