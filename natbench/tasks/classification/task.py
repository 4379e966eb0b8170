"""The classification task kind: :class:`ClassificationTask` (the package docstring)."""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...analysis import sparsity
from ...attacks._base import cw_margin_loss
from ...contracts import Batch, EvalOut, Labels, LogitsObjective, Objective
from ...data import READERS, FileSplits, stratified_pick
from ...errors import ConfigError, UnknownNameError, suggest
from ...registry import load_target
from .._base import TaskBase, eval_mode
from .data import (FILE_AUGMENTS, FILE_DATA_DEFAULTS, READER_OPTIONS, TENSOR_AUGMENTS, ImageFileLoader, ImageTransform,
                   TensorLoader, crop_flip, data_option)

log = logging.getLogger("natbench.tasks.classification")



class ClassificationTask(TaskBase):
    """Classification on tensors in [0, 1]; the model's output is logits (B, C)."""

    capabilities = frozenset({"logits"})
    headline_metric = "accuracy"
    OBJECTIVES = ("ce", "cw", "logits", "labels")
    EVAL_SHARDABLE = True  # per-sample results do not depend on the other samples: evaluation shards across ranks

    _files: FileSplits | None = None  # set when the reader returned files (decoded per batch)

    # ------------------------------------------------------------------ model and data
    def build_model(self) -> nn.Module:
        from ...models import build

        return build(self.spec.model)

    def check_data(self) -> None:
        """Read the data now (the file list for file datasets) so missing data fails before training."""
        data = self._data()
        channels = None
        if self._files is not None:  # decode one image of each split: unreadable files fail now too
            tf = self._transforms()[1]
            for split in ("train", "test"):
                files, y = data[split]
                channels = ImageFileLoader(files, y, 1, tf, hint=self._files.hint).load(0).shape[-1]
        from ...preflight import check_fits_data  # the model fits the data: fails now, not during training

        for split in ("train", "test"):
            x, y = data[split]
            check_fits_data(self.spec.model, self.spec.data.dataset, channels if self._files is not None else x.shape[1], y)

    def _data(self) -> dict[str, tuple[Any, Tensor]]:
        if self._splits is None:
            d = self.spec.data
            accepted = inspect.signature(load_target(READERS[d.dataset])).parameters if d.dataset in READERS else {}
            options = {k: data_option(d, k) for k in READER_OPTIONS if k in accepted}
            try:
                splits = self._read_splits(**options)
            except UnknownNameError as e:  # e.g. an unknown class list
                raise ConfigError(f"data.{'/'.join(options) or 'dataset'}: {e}") from None
            self._check_options(d, isinstance(splits, FileSplits))
            val_idx = stratified_pick(splits.train_y.numpy(), d.val_fraction, d.split_seed + 1)
            train_mask = np.ones(len(splits.train_y), dtype=bool)
            train_mask[val_idx] = False
            if isinstance(splits, FileSplits):
                self._files = splits
                files = splits.train_files
                self._splits = {
                    "train": ([f for f, keep in zip(files, train_mask) if keep], splits.train_y[torch.from_numpy(train_mask)]),
                    "val": ([files[i] for i in val_idx], splits.train_y[torch.as_tensor(val_idx, dtype=torch.long)]),
                    "test": (list(splits.test_files), splits.test_y),
                }
            else:
                train_mask, val_idx = torch.from_numpy(train_mask), torch.as_tensor(val_idx)
                self._splits = {  # indexed once here; loaders() runs every epoch
                    "train": (splits.train_x[train_mask], splits.train_y[train_mask]),
                    "val": (splits.train_x[val_idx], splits.train_y[val_idx]),
                    "test": (splits.test_x, splits.test_y),
                }
        return self._splits

    def _check_options(self, d: Any, files: bool) -> None:
        augments = FILE_AUGMENTS if files else TENSOR_AUGMENTS
        if d.augment not in augments:
            raise ConfigError(f"data.augment: '{d.augment}' is not offered for dataset {d.dataset}.{suggest(d.augment, augments)} "
                              f"Available: {', '.join(augments)}")
        if not files:  # a resize/class list on an in-memory dataset would be silently ignored
            for name in ("image_size", "resize", "class_list"):
                if data_option(d, name) != FILE_DATA_DEFAULTS[name]:
                    raise ConfigError(f"data.{name}: only file datasets (imagenet100) use it; {d.dataset} images are "
                                      f"used at their stored size. Drop this setting")
            return
        size, resize, workers = (data_option(d, k) for k in ("image_size", "resize", "num_workers"))
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"data.image_size: must be a positive integer, got {size!r}")
        if resize is not None and (not isinstance(resize, int) or resize < size):
            raise ConfigError(f"data.resize: must be >= data.image_size ({size}) or null (= round(image_size * 256 / 224)), got {resize!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"data.num_workers: must be an integer >= 0, got {workers!r}")

    def _transforms(self) -> tuple[ImageTransform, ImageTransform]:
        """(train, eval) transforms of a file dataset."""
        d = self.spec.data
        size, resize = data_option(d, "image_size"), data_option(d, "resize")
        resize = round(size * 256 / 224) if resize is None else resize
        train_mode = "eval" if d.augment == "none" else d.augment
        return ImageTransform(train_mode, size, resize), ImageTransform("eval", size, resize)

    def resident(self, device: torch.device | str) -> bool:
        """The CUDA fast path: hold an in-memory dataset on ``device`` (images keep their uint8 storage),
        so batches are indexed, converted and augmented there with no host-to-device copy per batch.
        False (nothing moved) for file datasets, whose images are decoded per batch."""
        data = self._data()
        if self._files is not None:
            return False
        self._splits = {k: (x.to(device), y.to(device)) for k, (x, y) in data.items()}
        return True

    def loaders(self, batch_size: int, generator: torch.Generator, eval_batch_size: int = 256):
        """(train, val, test) loaders; val is carved from the training set, never the test set."""
        data = self._data()
        if self._files is not None:
            train_tf, eval_tf = self._transforms()
            kw = {"num_workers": data_option(self.spec.data, "num_workers"), "hint": self._files.hint}
            train = ImageFileLoader(*data["train"], batch_size, train_tf, shuffle=True, generator=generator, **kw)
            val = ImageFileLoader(*data["val"], eval_batch_size, eval_tf, **kw)
            test = ImageFileLoader(*data["test"], eval_batch_size, eval_tf, **kw)
            return train, val, test
        augment = crop_flip if self.spec.data.augment == "crop_flip" else None
        train = TensorLoader(*data["train"], batch_size, shuffle=True, generator=generator, augment=augment)
        val = TensorLoader(*data["val"], eval_batch_size)
        test = TensorLoader(*data["test"], eval_batch_size)
        return train, val, test

    # ------------------------------------------------------------------ losses and objectives
    def task_loss(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        return F.cross_entropy(model(x), batch.y, reduction="none")

    def objective(self, model: nn.Module, batch: Batch, kind: str) -> Objective:
        y = batch.y
        if kind == "ce":
            return lambda z: F.cross_entropy(model(z), y, reduction="none")
        if kind == "cw":
            return lambda z: cw_margin_loss(model(z), y, kappa=50.0)
        if kind == "logits":
            return LogitsObjective(model, y, self.spec.model.num_classes)
        if kind == "labels":
            return Labels(y, self.spec.model.num_classes)
        raise ConfigError(f"objective '{kind}' is not offered by task kind classification.{suggest(kind, self.OBJECTIVES)} Available: {', '.join(self.OBJECTIVES)}")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, loader: Any, attack: Any | None = None, *,
                 objective: str | Callable[[nn.Module, Batch], Any] = "ce",
                 eps: float | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", on_batch: Callable[[], None] | None = None,
                 with_sparsity: bool = False) -> EvalOut:
        """Accuracy (and per-sample correctness) under ``attack`` (clean if None), model in eval mode.

        ``objective`` is the kind the task builds for the attack, or a builder ``(model, batch) ->
        objective``. Every attacked batch is checked to lie in the eps-ball and [0, 1]. A batch that
        runs out of CUDA memory is evaluated in halves (recursively, per-sample results in order);
        the size that fitted is kept for the following batches (``max_eval_batch``). A minimum-norm
        attack (``minimum_norm``: cw-l2, fmn) adds ``accuracy@<e>`` per eps of its ``eps_grid`` and
        ``median_norm`` from its per-sample minimal norms (:mod:`natbench.attacks._minnorm`).
        """
        eps = self.threat.eps if eps is None else eps
        build = objective if callable(objective) else (lambda m, b: self.objective(m, b, objective))
        correct, all_logits, all_y = [], [], []
        min_norms = [] if getattr(attack, "minimum_norm", False) else None  # a minimum-norm attack's per-sample norms

        def run(batch: Batch) -> Tensor:
            x = batch.x
            if attack is not None:
                x = self.attacked(attack, build, model, batch, eps, generator)
            with torch.no_grad():
                z = model(x)
            if min_norms is not None:
                min_norms.append(attack.last_norms.cpu())
            return z

        with eval_mode(model):
            for batch in loader:
                batch = batch.to(device)
                for z, part in self._fitting(run, batch):
                    correct.append((z.argmax(1) == part.y).cpu())
                    if with_sparsity:
                        all_logits.append(z.cpu())
                        all_y.append(part.y.cpu())
                if on_batch is not None:
                    on_batch()
        flags = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
        metrics = {"accuracy": flags.float().mean().item() if len(flags) else float("nan")}
        if with_sparsity and all_logits:
            metrics.update(sparsity.summary(torch.cat(all_logits), torch.cat(all_y)))
        if min_norms:  # accuracy@<e> over the attack's eps_grid and median_norm (natbench.attacks._minnorm)
            metrics.update(attack.metrics(torch.cat(min_norms), eps))
        return EvalOut(metrics, flags)
