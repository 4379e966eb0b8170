"""A common corruption as a suite entry: one (corruption, severity) of ImageNet-C (Hendrycks &
Dietterich, ICLR 2019) evaluated like an attack, stored like one (results + per-sample flags).

It is not in an eps-ball: the class says so with ``threat = "corruption"``, and the evaluation
(``TaskBase.attacked``) calls :meth:`Corruption.corrupt` instead of the attack path (no objective, no
ball check); the gradient-masking checks and their escalations skip such entries
(:func:`is_corruption`). Per-sample flags are those of the task's test set, in its order.

Where the images come from (``source``):

- ``published``: the task's published corrupted set, read from the data root next to the clean set
  (``<data root>/CIFAR-10-C`` for ``cifar10``, ``<data root>/CIFAR-100-C`` for ``cifar100``, the
  layouts of :mod:`natbench.data.corrupted`): image ``i`` of the test set is row ``i`` of the slice,
  whose label must equal the test label (else the set belongs to another test set: an error);
  ``<data root>/ImageNet-C/<corruption>/<severity>/<wnid>/<file>`` for ``imagenet100``: the copy of each
  test file (same wnid folder and file name), 224 x 224, resized to ``data.image_size`` when that differs;
- ``generated``: the test images corrupted on the fly by ``imagecorruptions``
  (:mod:`natbench.corruptions`, deterministic per image index and ``seed``; ``upscale`` for images
  under 32 px such as the 8x8 digits);
- ``auto`` (default): ``published`` when the task's dataset has a published set and it is on disk,
  else ``generated``.

Every result carries the metric ``published_set`` (1: read from disk, 0: generated) and, when
generated, ``imagecorruptions_version`` (``major * 10000 + minor * 100 + patch``: 1.1.2 -> 10102).

Task kinds: classification corrupts the test images; re-id corrupts query **and** gallery (``side:
both``, as Market-1501-C does; ``side: query`` keeps a clean gallery); detection corrupts the images
as the model sees them (after the task's resize; Michaelis et al. corrupt before) and keeps the
ground-truth boxes, which these corruptions do not move. ``seed`` is the corruption's own seed, not
the run's: every run of a task sees the same corrupted test set, so rows (and mCE) compare.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from natbench.attacks._base import NORMS
from natbench.corruption_suite import PREFIX, entry_id, parse_id  # noqa: F401 (the result ids)
from natbench.contracts import Batch, Objective
from natbench.errors import ConfigError, DataError

#: datasets with a published corrupted set readable here: dataset -> (reader name, folder)
PUBLISHED = {"cifar10": ("cifar10-c", "CIFAR-10-C"), "cifar100": ("cifar100-c", "CIFAR-100-C"),
             "imagenet100": ("imagenet-c", "ImageNet-C")}
SOURCES = ("auto", "published", "generated")


def is_corruption(attack: Any) -> bool:
    """True for an attack object (or class) that is not in an eps-ball (a corruption)."""
    return getattr(attack, "threat", None) == "corruption"


def version_code(version: str) -> float:
    """``"1.1.2"`` -> 10102.0 (a metric is a number)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    return float(parts[0] * 10000 + parts[1] * 100 + parts[2])


class Corruption:
    """One ImageNet-C corruption at one severity (module docstring)."""

    name = "corruption"
    objective_kind = "none"  # no objective is built (TaskBase.attack_objective): a corruption uses no gradient
    threat: ClassVar[str] = "corruption"  # not in an eps-ball: no ball check, no gradient-masking checks
    norms: ClassVar[tuple[str, ...]] = NORMS  # independent of the threat model: allowed beside any norm
    black_box = False

    @dataclass(frozen=True)
    class Params:
        corruption: str = "gaussian_noise"  # one of the 15 ImageNet-C corruptions (natbench.corruptions.CORRUPTIONS)
        severity: int = 1  # 1..5
        seed: int = 0  # the corruption's seed (not the run's): every run sees the same corrupted test set
        source: str = "auto"  # "auto" | "published" (the task's corrupted set on disk) | "generated" (imagecorruptions)
        upscale: bool = True  # generated: images under 32 px enlarged to 32 px and back (natbench.corruptions)
        side: str = "both"  # re-id: "both" corrupts query and gallery (Market-1501-C); "query" | "gallery"

    def __init__(self, params: "Corruption.Params | None" = None):
        from natbench.corruptions import check

        self.params = p = params or self.Params()
        check(p.corruption, p.severity)
        if p.source not in SOURCES:
            raise ConfigError(f"corruption source '{p.source}': one of {', '.join(SOURCES)}")
        if p.side not in ("query", "gallery", "both"):
            raise ConfigError(f"corruption side '{p.side}': one of query, gallery, both")
        self.result_metrics: dict[str, float] = {}
        self._published: dict[tuple, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ the attack protocol
    def __call__(self, objective: Objective | None, x: Tensor, *, eps: float = 0.0,
                 generator: torch.Generator | None = None, index: Tensor | None = None) -> Tensor:
        """``x`` corrupted on the fly (``index``: the images' dataset indices, default 0..N-1)."""
        return self._generate(x, torch.arange(len(x)) if index is None else index, "")

    def corrupt(self, batch: Batch, task: Any) -> Tensor:
        """The corrupted images of ``batch`` of ``task``'s test set (module docstring)."""
        index = batch.index if batch.index is not None else torch.arange(len(batch))
        published = self._published_set(task)
        if published is None:
            return self._generate(batch.x, index, str(batch.extra.get("split", "")))
        if isinstance(published, Path):  # ImageNet-C: the corrupted copy of each test file
            return self._imagenet_c(batch, index, task, published)
        x, y = published
        idx = index.cpu()
        if len(idx) and int(idx.max()) >= len(y):
            raise DataError(f"{self._where(task)}: holds {len(y)} images per severity, the test set more "
                            f"(index {int(idx.max())}); it belongs to another test set")
        if not torch.equal(y[idx], batch.y.cpu()):
            raise DataError(f"{self._where(task)}: its labels differ from the test set's at the same rows; "
                            f"it belongs to another test set (or another order)")
        return x[idx].to(device=batch.x.device, dtype=batch.x.dtype) / 255.0

    # ------------------------------------------------------------------ the two sources
    def _generate(self, x: Tensor, index: Tensor, split: str) -> Tensor:
        from natbench import corruptions

        p = self.params
        seed = p.seed if split in ("", "test", "query") else _split_seed(p.seed, split)  # gallery != query draws
        self.result_metrics = {"published_set": 0.0, "imagecorruptions_version": version_code(corruptions.version())}
        return corruptions.corrupt_batch(x, p.corruption, p.severity, seed=seed, indices=index.tolist(),
                                         upscale=p.upscale)

    def _published_set(self, task: Any) -> tuple[Tensor, Tensor] | Path | None:
        """None: generate; CIFAR-C: the slice ``(x uint8, y)``; ImageNet-C: the slice's folder."""
        p = self.params
        dataset = getattr(getattr(getattr(task, "spec", None), "data", None), "dataset", None)
        root = getattr(task, "data_root", None)
        known = PUBLISHED.get(dataset)
        folder = None if known is None or root is None else Path(root).expanduser() / known[1]
        found = folder is not None and ((folder / p.corruption / str(p.severity)).is_dir() if known[0] == "imagenet-c"
                                        else (folder / "labels.npy").is_file())
        if p.source == "generated" or (p.source == "auto" and not found):
            return None
        if known is None:
            raise ConfigError(f"corruption source 'published': dataset {dataset} has no published corrupted set natbench "
                              f"reads ({', '.join(PUBLISHED)}); use source auto or generated")
        if folder is None:
            raise DataError(f"corruption source 'published': no data root given for {known[1]}; pass --data-root")
        self.result_metrics = {"published_set": 1.0}
        if known[0] == "imagenet-c":
            if not found:
                raise DataError(f"ImageNet-C {folder / p.corruption / str(p.severity)}: folder not found. Fix: extract the "
                                f"archive next to imagenet100 in the data root, or: natbench data fixture imagenet-c --out DIR")
            return folder / p.corruption / str(p.severity)
        key = (str(root), known[0])
        if key not in self._published:
            from natbench.data.corrupted import read_cifar_c

            self._published[key] = read_cifar_c(root, known[0], p.corruption, p.severity)
        return self._published[key]

    def _imagenet_c(self, batch: Batch, index: Tensor, task: Any, folder: Path) -> Tensor:
        """ImageNet-C's copies (``<folder>/<wnid>/<file name>``, 224 x 224 centre crops) of the test files at
        ``index``, resized to the task's ``image_size`` when it is not 224 (ImageNet-C is defined at 224)."""
        import numpy as np
        from PIL import Image

        from natbench.tasks._base import decode_image
        from natbench.tasks.classification.data import data_option

        files = task._data()["test"][0]  # the classification task's test file list, in loader order
        size = data_option(task.spec.data, "image_size")

        def load(im):
            im = im.convert("RGB")
            return np.asarray(im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR), dtype=np.uint8)

        out = []
        for i in index.tolist():
            f = Path(files[i])
            path = folder / f.parent.name / f.name
            if not path.is_file():
                raise DataError(f"ImageNet-C {path}: no corrupted copy of test image {f.parent.name}/{f.name}; the set "
                                f"belongs to another val set (or is incomplete)")
            out.append(decode_image(path, load, "Fix: extract the ImageNet-C archive, or natbench data fixture imagenet-c"))
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
        return x.to(device=batch.x.device, dtype=batch.x.dtype) / 255.0

    def _where(self, task: Any) -> str:
        name = PUBLISHED[task.spec.data.dataset][1]
        return f"{name} {self.params.corruption} severity {self.params.severity} in {task.data_root}"


def _split_seed(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(repr(("corruption-split", int(seed), split)).encode()).digest()[:4], "little")
