"""What the analyses read from a model: logits, penultimate features and labels of a loader, clean
and (optionally) under an attack. Eval mode, float32, no parameter gradients; the attack gets the
task's own objective (``"ce"`` by default), exactly as in the suite evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..checks import assert_in_ball
from ..contracts import Batch
from .geometry import penultimate


def head_rows(batch: Batch, n: int) -> Batch:
    """The first ``n`` rows of ``batch`` (tensors in ``extra`` with one row per sample cut too)."""
    if n >= len(batch):
        return batch
    cut = {k: (v[:n] if isinstance(v, Tensor) and v.dim() and v.shape[0] == len(batch) else v) for k, v in batch.extra.items()}
    return Batch(batch.x[:n], batch.y[:n], None if batch.index is None else batch.index[:n], cut)


@dataclass
class Outputs:
    """Rows in loader order: labels ``y`` (N,), ``logits`` (N, C) and ``features`` (N, D) of the clean
    inputs, and the same under the attack (``adv_*``, None without one)."""

    y: Tensor
    logits: Tensor
    features: Tensor
    adv_logits: Tensor | None = None
    adv_features: Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


def collect(task: Any, model: nn.Module, loader: Any, attack: Any | None = None, *, eps: float | None = None,
            objective: str = "ce", device: torch.device | str = "cpu", generator: torch.Generator | None = None,
            max_samples: int | None = None, on_batch: Callable[[], None] | None = None) -> Outputs:
    """Run ``model`` (eval mode; its mode is restored) over ``loader``; with ``attack``, also on the
    adversarial inputs ``attack(task.objective(model, batch, objective), x, eps=eps)`` (eps: the
    task's; the attack bound to the task's norm). At most ``max_samples`` rows (the first ones)."""
    eps = task.threat.eps if eps is None else eps
    if attack is not None:  # the attack runs in the task's threat-model norm, as in the suite evaluation
        from ..attacks._base import with_norm

        with_norm(attack, task.threat.norm, f"analysis attack {getattr(attack, 'name', attack)}")
    was = model.training
    model.eval()
    ys, zs, hs, azs, ahs = [], [], [], [], []
    n = 0
    try:
        for batch in loader:
            if max_samples is not None and n >= max_samples:
                break
            batch = batch.to(device)
            if max_samples is not None and n + len(batch) > max_samples:
                batch = head_rows(batch, max_samples - n)
            with torch.no_grad():
                h, z = penultimate(model, batch.x)
            ys.append(batch.y.cpu())
            zs.append(z.float().cpu())
            hs.append(h.float().cpu())
            if attack is not None:
                x_adv = attack(task.objective(model, batch, objective), batch.x, eps=eps, generator=generator)
                assert_in_ball(batch.x, x_adv, eps, f"analysis attack {getattr(attack, 'name', attack)}",
                               norm=getattr(attack, "norm", "linf"))
                with torch.no_grad():
                    ah, az = penultimate(model, x_adv)
                azs.append(az.float().cpu())
                ahs.append(ah.float().cpu())
            n += len(batch)
            if on_batch is not None:
                on_batch()
    finally:
        model.train(was)
    if not ys:
        raise ValueError("collect: the loader yielded no samples")
    cat = torch.cat
    return Outputs(cat(ys), cat(zs), cat(hs), cat(azs) if azs else None, cat(ahs) if ahs else None)


class LimitedLoader:
    """The first ``n`` samples of ``loader`` (batches cut at the limit), for analyses on a subset of a
    large test set; iterates ``loader`` afresh each time."""

    def __init__(self, loader, n: int):
        if n < 1:
            raise ValueError(f"LimitedLoader: n must be >= 1, got {n}")
        self.loader, self.n = loader, int(n)
        self.batch_size = getattr(loader, "batch_size", None)

    def __len__(self) -> int:
        bs = self.batch_size or 1
        return min(len(self.loader), (self.n + bs - 1) // bs)

    def __iter__(self):
        seen = 0
        for batch in self.loader:
            if seen >= self.n:
                return
            if seen + len(batch) > self.n:
                batch = head_rows(batch, self.n - seen)
            seen += len(batch)
            yield batch
