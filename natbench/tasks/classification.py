"""Image classification: digits (embedded), CIFAR-10/100 (in memory) and ImageNet-100 (JPEG files).

Capabilities ``{"logits"}``; headline metric ``accuracy``. Objectives an attack can ask for:

- ``"ce"``: per-sample cross-entropy ``CE(f(x'), y)``;
- ``"logits"``: a :class:`~natbench.contracts.LogitsObjective` (``x' -> logits`` with ``.y``), for
  attacks that need the class scores (APGD-DLR/-T, FAB, Square, AutoAttack);
- ``"cw"``: the Carlini-Wagner margin ``-clamp(z_y - max_{j!=y} z_j + kappa, min=0)``, kappa = 50
  (as CW-inf in the FAT / CAT evaluations, notes Sec. 9.1);
- ``"labels"``: a :class:`~natbench.contracts.Labels` (the labels only, nothing of the model), for
  transfer attacks that never query the target.

``evaluate`` also takes an objective *builder* ``(model, batch) -> objective`` in place of a kind:
the runner passes one for the adaptive attack's ``"defense"`` objective (the composition's own
training loss). Evaluation batches that run out of CUDA memory are split in halves (recursively) and
later batches use the size that fitted (:meth:`ClassificationTask.evaluate`).

Data. A reader (``natbench.data.READERS``) returns either tensors (:class:`TensorSplits`, served by
:class:`TensorLoader`; ``data.augment`` ``none`` | ``crop_flip`` = RandomCrop(32, padding=4) + flip)
or image files (:class:`FileSplits`, too large for memory, served by :class:`ImageFileLoader`, which
decodes each batch with PIL and the deterministic :class:`ImageTransform`). File datasets use the
DataCfg fields ``image_size`` (square side fed to the model, default 224), ``resize`` (shorter side
before a centre/random crop; default ``round(image_size * 256 / 224)``, i.e. 256 at 224),
``class_list`` (the reader's pinned class list, ImageNet-100: ``cmc`` | ``gat``) and ``num_workers``
(decode threads; results do not depend on it), read with ``getattr`` and the defaults of
:data:`FILE_DATA_DEFAULTS` so specs without them keep working. ``data.augment`` for files: ``none``
(the eval transform), ``crop_flip`` (Resize(resize) + RandomCrop(image_size) + flip) or
``resized_crop_flip`` (RandomResizedCrop(image_size), scale (0.08, 1), ratio (3/4, 4/3), + flip, as
GAT-ImageNet100.py); val and test: Resize(resize) + CenterCrop(image_size). No Normalize: inputs
are in [0, 1] (the model normalises).

Determinism: every random choice of an epoch (the order and each image's crop/flip uniforms) is
drawn from the epoch's generator in the main process when iteration starts, so batches are identical
for the same seed whatever ``num_workers``; nothing uses the global RNG.
"""
from __future__ import annotations

import inspect
import logging
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis import sparsity
from ..attacks._base import cw_margin_loss
from ..checks import assert_in_ball
from ..contracts import Batch, EvalOut, Labels, LogitsObjective, Objective
from ..data import READERS, FileSplits, stratified_pick
from ..errors import ConfigError, DataError, UnknownNameError, suggest
from ..registry import load_target
from ..taskspec import TaskSpec

log = logging.getLogger(__name__)

#: Defaults of the DataCfg fields that only file datasets use (read with getattr: specs may lack them).
FILE_DATA_DEFAULTS: dict[str, Any] = {"image_size": 224, "resize": None, "class_list": "cmc", "num_workers": 0}
TENSOR_AUGMENTS = ("none", "crop_flip")
FILE_AUGMENTS = ("none", "crop_flip", "resized_crop_flip")
#: DataCfg fields a reader receives when its signature declares them.
READER_OPTIONS = ("class_list",)


def data_option(data: Any, name: str) -> Any:
    """``data.<name>``, or its default while :class:`~natbench.taskspec.DataCfg` has no such field."""
    return getattr(data, name, FILE_DATA_DEFAULTS[name])


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
        order = order.to(self.x.device)  # resident data (the CUDA fast path) is indexed where it lives
        for i in range(0, n, self.batch_size):
            idx = order[i: i + self.batch_size]
            x = self.x[idx]
            if x.dtype == torch.uint8:  # readers may keep images as uint8 (4x less memory)
                x = x.float().div_(255.0)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield Batch(x, self.y[idx], idx)


def crop_flip(x: Tensor, generator: torch.Generator | None, pad: int = 4) -> Tensor:
    """RandomCrop(size, padding=pad) + horizontal flip, batched, drawn from ``generator``.

    The offsets and flips are drawn on the generator's device (CPU: a few numbers per image) and
    the crops are taken in one gather on ``x``'s device (the GPU on the fast path): pixel for pixel
    the per-image ``padded[i, :, dy:dy+h, dx:dx+w]`` (flipped where drawn)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> uint8 tensor ``(3, size, size)``; random choices come from pre-drawn uniforms ``u``.

    ``mode``: ``"eval"`` (Resize(resize) + CenterCrop(size)), ``"crop_flip"`` (Resize(resize) +
    RandomCrop(size) + flip) or ``"resized_crop_flip"`` (RandomResizedCrop(size, scale, ratio) + flip).
    Pixel-for-pixel what torchvision's transforms (0.29, PIL backend, bilinear) do with the same
    random parameters; the parameters follow torchvision's ``get_params`` but are computed from
    ``N_UNIFORMS`` uniforms in [0, 1) per image, drawn beforehand by :meth:`draw`.
    """

    mode: str
    size: int
    resize: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    N_UNIFORMS: ClassVar[int] = 41  # RandomResizedCrop: 10 attempts x (area, log-ratio, top, left); then flip

    def __post_init__(self):
        if self.mode not in ("eval", "crop_flip", "resized_crop_flip"):
            raise ValueError(f"ImageTransform mode '{self.mode}': expected eval, crop_flip or resized_crop_flip")

    @property
    def random(self) -> bool:
        return self.mode != "eval"

    def draw(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        """The uniforms of ``n`` images (None for the deterministic eval transform)."""
        return torch.rand(n, self.N_UNIFORMS, generator=generator, dtype=torch.float64) if self.random else None

    def __call__(self, img, u: Sequence[float] | None = None) -> Tensor:
        """The transformed image as a uint8 tensor ``(3, size, size)``."""
        return torch.from_numpy(np.array(self.apply(img, u), dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def apply(self, img, u: Sequence[float] | None = None):
        """The transformed image as an RGB PIL image ``size`` x ``size`` (PIL only: no torch op per image)."""
        from PIL import Image

        img = img.convert("RGB")
        if self.mode == "resized_crop_flip":
            top, left, h, w = self.resized_crop_params(img.width, img.height, u)
            img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
        else:
            img = self._resize_shorter(img)
            if self.mode == "crop_flip":
                top = int(u[2] * (img.height - self.size + 1))
                left = int(u[3] * (img.width - self.size + 1))
            else:  # torchvision CenterCrop: int(round(...)) (round half to even)
                top = int(round((img.height - self.size) / 2.0))
                left = int(round((img.width - self.size) / 2.0))
            img = img.crop((left, top, left + self.size, top + self.size))
        if self.random and u[-1] < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def _resize_shorter(self, img):
        """torchvision ``Resize(int)``: shorter side -> ``resize``, longer side truncated in proportion."""
        from PIL import Image

        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        return img if size == (w, h) else img.resize(size, Image.BILINEAR)

    def resized_crop_params(self, width: int, height: int, u: Sequence[float]) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` as ``T.RandomResizedCrop.get_params``, from the uniforms ``u``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for t in range(10):
            target_area = area * (self.scale[0] + float(u[4 * t]) * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_ratio[0] + float(u[4 * t + 1]) * (log_ratio[1] - log_ratio[0]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(float(u[4 * t + 2]) * (height - h + 1)), int(float(u[4 * t + 3]) * (width - w + 1)), h, w
        in_ratio = width / height  # fallback: the central crop
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w


class ImageFileLoader:
    """Batches decoded from image files on the fly; same interface and contract as :class:`TensorLoader`.

    When iteration starts, the order (``randperm``) and every image's transform uniforms are drawn
    from ``generator`` in the calling thread; ``num_workers`` > 0 decodes in that many threads (PIL
    releases the GIL), ``prefetch`` batches ahead. ``Batch.x`` is float32 in [0, 1], ``Batch.y``
    int64, ``Batch.index`` the positions in ``files``.
    """

    def __init__(self, files: Sequence[Path], y: Tensor, batch_size: int, transform: ImageTransform, *,
                 shuffle: bool = False, generator: torch.Generator | None = None, num_workers: int = 0,
                 prefetch: int = 2, hint: str = ""):
        self.files, self.y, self.batch_size, self.transform = files, y, batch_size, transform
        self.shuffle, self.generator, self.num_workers, self.prefetch, self.hint = shuffle, generator, num_workers, prefetch, hint

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def load(self, i: int, u: Tensor | None = None) -> np.ndarray:
        """Image ``i`` through the transform, as uint8 HWC ``(size, size, 3)``; an unreadable file is a DataError."""
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as im:
                return np.asarray(self.transform.apply(im, None if u is None else u.tolist()), dtype=np.uint8)
        except (OSError, Image.DecompressionBombError) as e:  # missing file, PIL's UnidentifiedImageError, truncated JPEG
            raise DataError(f"{path}: not a readable image ({e}). {self.hint}".replace("\n", " ").strip()) from e

    def __iter__(self) -> Iterator[Batch]:
        n, bs = len(self.y), self.batch_size
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        u = self.transform.draw(n, self.generator)  # all of the epoch's random choices, now, in this thread
        chunks = [(order[i: i + bs], None if u is None else u[i: i + bs]) for i in range(0, n, bs)]
        if self.num_workers <= 0:
            for idx, uu in chunks:
                yield self._batch(idx, [self.load(int(j), None if uu is None else uu[k]) for k, j in enumerate(idx)])
            return
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="natbench-decode")
        pending: deque = deque()
        todo = iter(chunks)

        def submit() -> None:
            chunk = next(todo, None)
            if chunk is not None:
                idx, uu = chunk
                pending.append((idx, [pool.submit(self.load, int(j), None if uu is None else uu[k])
                                      for k, j in enumerate(idx)]))

        try:
            for _ in range(max(1, self.prefetch)):
                submit()
            while pending:
                idx, futures = pending.popleft()
                submit()
                yield self._batch(idx, [f.result() for f in futures])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _batch(self, idx: Tensor, images: list[np.ndarray]) -> Batch:
        x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))  # NHWC -> NCHW in numpy: one copy
        return Batch(torch.from_numpy(x).float().div_(255.0), self.y[idx], idx)


class ClassificationTask:
    """Classification on tensors in [0, 1]; the model's output is logits (B, C)."""

    capabilities = frozenset({"logits"})
    headline_metric = "accuracy"
    OBJECTIVES = ("ce", "cw", "logits", "labels")
    EVAL_SHARDABLE = True  # per-sample results do not depend on the other samples: evaluation shards across ranks

    def __init__(self, spec: TaskSpec, data_root: Path | None = None):
        self.spec = spec
        self.name = spec.task
        self.threat = spec.threat_model
        self.data_root = data_root
        self._splits: dict[str, tuple[Any, Tensor]] | None = None
        self._files: FileSplits | None = None  # set when the reader returned files (decoded per batch)

    # ------------------------------------------------------------------ model and data
    def build_model(self) -> nn.Module:
        from ..models import build

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
        from ..preflight import check_fits_data  # the model fits the data: fails now, not during training

        for split in ("train", "test"):
            x, y = data[split]
            check_fits_data(self.spec.model, self.spec.data.dataset, channels if self._files is not None else x.shape[1], y)

    def _data(self) -> dict[str, tuple[Any, Tensor]]:
        if self._splits is None:
            d = self.spec.data
            if d.dataset not in READERS:
                raise ConfigError(f"data.dataset: unknown dataset '{d.dataset}'.{suggest(d.dataset, READERS)} Available: {', '.join(READERS)}")
            read = load_target(READERS[d.dataset])
            accepted = inspect.signature(read).parameters
            options = {k: data_option(d, k) for k in READER_OPTIONS if k in accepted}
            try:
                splits = read(self.data_root, test_fraction=d.test_fraction, split_seed=d.split_seed, **options)
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
        the size that fitted is kept for the following batches (``max_eval_batch``).
        """
        eps = self.threat.eps if eps is None else eps
        build = objective if callable(objective) else (lambda m, b: self.objective(m, b, objective))
        was_training = model.training
        model.eval()
        correct, all_logits, all_y = [], [], []

        def run(batch: Batch) -> Tensor:
            x = batch.x
            if attack is not None:
                x = attack(build(model, batch), batch.x, eps=eps, generator=generator)
                assert_in_ball(batch.x, x, eps, f"attack {getattr(attack, 'name', attack)}")
            with torch.no_grad():
                return model(x)

        try:
            for batch in loader:
                batch = batch.to(device)
                for z, part in self._fitting(run, batch):
                    correct.append((z.argmax(1) == part.y).cpu())
                    if with_sparsity:
                        all_logits.append(z.cpu())
                        all_y.append(part.y.cpu())
                if on_batch is not None:
                    on_batch()
        finally:
            model.train(was_training)
        flags = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
        metrics = {"accuracy": flags.float().mean().item() if len(flags) else float("nan")}
        if with_sparsity and all_logits:
            metrics.update(sparsity.summary(torch.cat(all_logits), torch.cat(all_y)))
        return EvalOut(metrics, flags)

    #: largest evaluation chunk that fitted in memory after an out-of-memory split (None: no split yet)
    max_eval_batch: int | None = None

    def _fitting(self, run: Callable[[Batch], Tensor], batch: Batch) -> list[tuple[Tensor, Batch]]:
        """``[(run(part), part)]`` over chunks of ``batch`` no larger than :attr:`max_eval_batch`;
        a chunk that raises ``torch.OutOfMemoryError`` is split in two and retried (down to one sample)."""
        size = len(batch) if self.max_eval_batch is None else min(len(batch), self.max_eval_batch)
        out, start = [], 0
        while start < len(batch):
            part = batch.rows(start, start + size)
            try:
                out.append((run(part), part))
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = max(1, size // 2)
                self.max_eval_batch = size
                log.warning("evaluation ran out of memory; continuing with batches of %d", size)
                continue
            start += size
        return out

