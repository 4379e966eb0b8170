"""Image classification: digits (embedded), CIFAR-10/100 and ImageNet-100 (later issues).

Capabilities ``{"logits"}``; headline metric ``accuracy``. Objectives an attack can ask for:

- ``"ce"``: per-sample cross-entropy ``CE(f(x'), y)``;
- ``"cw"``: the Carlini-Wagner margin ``-clamp(z_y - max_{j!=y} z_j + kappa, min=0)``, kappa = 50
  (as CW-inf in the FAT / CAT evaluations, notes Sec. 9.1).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis import sparsity
from ..attacks._base import cw_margin_loss
from ..checks import assert_in_ball
from ..contracts import Batch, EvalOut, Objective
from ..data import READERS, stratified_pick
from ..errors import ConfigError, suggest
from ..registry import load_target
from ..taskspec import TaskSpec

log = logging.getLogger(__name__)


class TensorLoader:
    """Batches of in-memory tensors; shuffles with an explicit generator (deterministic)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = False,
                 generator: torch.Generator | None = None, augment: Callable[[Tensor, torch.Generator | None], Tensor] | None = None):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator, self.augment = shuffle, generator, augment

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i: i + self.batch_size]
            x = self.x[idx]
            if x.dtype == torch.uint8:  # readers may keep images as uint8 (4x less memory)
                x = x.float().div_(255.0)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield Batch(x, self.y[idx], idx)


def crop_flip(x: Tensor, generator: torch.Generator | None, pad: int = 4) -> Tensor:
    """RandomCrop(size, padding=pad) + horizontal flip, batched, drawn from ``generator``."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(b)])
    out[flip] = out[flip].flip(-1)
    return out


class ClassificationTask:
    """Classification on tensors in [0, 1]; the model's output is logits (B, C)."""

    capabilities = frozenset({"logits"})
    headline_metric = "accuracy"
    OBJECTIVES = ("ce", "cw")

    def __init__(self, spec: TaskSpec, data_root: Path | None = None):
        self.spec = spec
        self.name = spec.task
        self.threat = spec.threat_model
        self.data_root = data_root
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    # ------------------------------------------------------------------ model and data
    def build_model(self) -> nn.Module:
        from ..models import build

        return build(self.spec.model)

    def check_data(self) -> None:
        """Load the data now (cheap for embedded sets) so a missing dataset fails before training."""
        self._data()

    def _data(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._splits is None:
            d = self.spec.data
            if d.dataset not in READERS:
                raise ConfigError(f"data.dataset: unknown dataset '{d.dataset}'.{suggest(d.dataset, READERS)} Available: {', '.join(READERS)}")
            read = load_target(READERS[d.dataset])
            splits = read(self.data_root, test_fraction=d.test_fraction, split_seed=d.split_seed)
            val_idx = torch.as_tensor(stratified_pick(splits.train_y.numpy(), d.val_fraction, d.split_seed + 1))
            train_mask = torch.ones(len(splits.train_y), dtype=torch.bool)
            train_mask[val_idx] = False
            self._splits = {  # indexed once here; loaders() runs every epoch
                "train": (splits.train_x[train_mask], splits.train_y[train_mask]),
                "val": (splits.train_x[val_idx], splits.train_y[val_idx]),
                "test": (splits.test_x, splits.test_y),
            }
        return self._splits

    def loaders(self, batch_size: int, generator: torch.Generator, eval_batch_size: int = 256):
        """(train, val, test) loaders; val is carved from the training set, never the test set."""
        data = self._data()
        augment = crop_flip if self.spec.data.augment == "crop_flip" else None
        train = TensorLoader(*data["train"], batch_size, shuffle=True, generator=generator, augment=augment)
        val = TensorLoader(*data["val"], eval_batch_size)
        test = TensorLoader(*data["test"], eval_batch_size)
        return train, val, test

    # ------------------------------------------------------------------ losses and objectives
    def logits(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        return model(x)

    def task_loss(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        return F.cross_entropy(model(x), batch.y, reduction="none")

    def objective(self, model: nn.Module, batch: Batch, kind: str) -> Objective:
        y = batch.y
        if kind == "ce":
            return lambda z: F.cross_entropy(model(z), y, reduction="none")
        if kind == "cw":
            return lambda z: cw_margin_loss(model(z), y, kappa=50.0)
        raise ConfigError(f"objective '{kind}' is not offered by task kind classification.{suggest(kind, self.OBJECTIVES)} Available: {', '.join(self.OBJECTIVES)}")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, loader: Any, attack: Any | None = None, *, objective: str = "ce",
                 eps: float | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", on_batch: Callable[[], None] | None = None,
                 with_sparsity: bool = False) -> EvalOut:
        """Accuracy (and per-sample correctness) under ``attack`` (clean if None), model in eval mode.

        Every attacked batch is checked to lie in the eps-ball and [0, 1].
        """
        eps = self.threat.eps if eps is None else eps
        was_training = model.training
        model.eval()
        correct, all_logits, all_y = [], [], []
        try:
            for batch in loader:
                batch = batch.to(device)
                x = batch.x
                if attack is not None:
                    x = attack(self.objective(model, batch, objective), batch.x, eps=eps, generator=generator)
                    assert_in_ball(batch.x, x, eps, f"attack {getattr(attack, 'name', attack)}")
                with torch.no_grad():
                    z = model(x)
                correct.append((z.argmax(1) == batch.y).cpu())
                if with_sparsity:
                    all_logits.append(z.cpu())
                    all_y.append(batch.y.cpu())
                if on_batch is not None:
                    on_batch()
        finally:
            model.train(was_training)
        flags = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
        metrics = {"accuracy": flags.float().mean().item() if len(flags) else float("nan")}
        if with_sparsity and all_logits:
            metrics.update(sparsity.summary(torch.cat(all_logits), torch.cat(all_y)))
        return EvalOut(metrics, flags)
