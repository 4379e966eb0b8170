"""Classification data: in-memory tensors (:class:`TensorLoader`, ``crop_flip``) and image files decoded per
batch (:class:`ImageFileLoader`, :class:`ImageTransform`); the package docstring describes both."""
from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...contracts import Batch
from .._base import load_transformed

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
        return load_transformed(self.files[i], self.transform, u, self.hint)

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
