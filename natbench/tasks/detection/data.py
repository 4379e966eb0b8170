"""Detection data: anchor matching, the VOC loader and the validation carve-out (the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ...contracts import Batch
from ...data.voc import HINT as VOC_HINT, VOCItem
from .._base import decode_image, decoded

IGNORE = -100  # cross_entropy's ignore_index: the padding of Batch.y


@dataclass(frozen=True)
class AnchorSpec:
    """The default boxes of the task's architecture at its input size, and torchvision's matcher."""

    anchors: Tensor  # (A, 4) in input pixels
    matcher: Any  # torchvision det_utils.SSDMatcher


def match_anchors(spec: AnchorSpec, boxes: Tensor, keep: Tensor) -> Tensor:
    """(A,) index of the box each anchor is matched to (-1: background), matching only ``boxes[keep]``
    (torchvision's ``box_iou`` + ``SSDMatcher``, as ``SSD.forward`` does; no box: all -1)."""
    from torchvision.ops import box_iou

    a = spec.anchors
    kept = keep.nonzero().flatten()
    if len(kept) == 0:
        return torch.full((len(a),), -1, dtype=torch.int64)
    m = spec.matcher(box_iou(boxes[kept], a))
    return torch.where(m >= 0, kept[m.clamp(min=0)], torch.full_like(m, -1))


class VOCLoader:
    """Batches of VOC images resized to ``size`` x ``size``, with their targets and anchor matching.

    Shuffling and flips are drawn from ``generator`` in the calling thread before any decoding, so the
    batches do not depend on ``num_workers`` (decode threads); ``len()`` before iterating sees the
    same plan as the iteration.
    """

    def __init__(self, items: Sequence[VOCItem], batch_size: int, size: int, anchors: AnchorSpec, split: str, *,
                 augment: str = "none", shuffle: bool = False, generator: torch.Generator | None = None,
                 train_difficult: bool = False, num_workers: int = 0, hint: str = VOC_HINT):
        self.items, self.batch_size, self.size, self.anchors, self.split = list(items), batch_size, size, anchors, split
        self.augment, self.shuffle, self.generator = augment, shuffle, generator
        self.train_difficult, self.num_workers, self.hint = train_difficult, num_workers, hint
        self._plan: tuple[list[list[int]], Tensor | None] | None = None

    def _draw(self) -> tuple[list[list[int]], Tensor | None]:
        n, bs = len(self.items), self.batch_size
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else list(range(n))
        flips = torch.rand(n, generator=self.generator) < 0.5 if self.augment == "flip" else None
        return [order[i: i + bs] for i in range(0, n, bs)], flips

    def _batches(self) -> tuple[list[list[int]], Tensor | None]:
        if self._plan is None:
            self._plan = self._draw()
        return self._plan

    def __len__(self) -> int:
        return len(self._batches()[0])

    def load(self, i: int, flip: bool = False) -> np.ndarray:
        """uint8 (S, S, 3) of item i, PIL bilinear resize (+ horizontal flip)."""
        from PIL import Image

        def apply(im):
            im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            return np.asarray(im.transpose(Image.FLIP_LEFT_RIGHT) if flip else im, dtype=np.uint8)

        return decode_image(self.items[i].path, apply, self.hint, "PASCAL VOC ")

    def targets(self, i: int, flip: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``(boxes (G, 4) in S x S pixels, labels (G,), difficult (G,))`` of item i."""
        item = self.items[i]
        s = self.size
        boxes = torch.from_numpy(item.boxes.astype(np.float32)).reshape(-1, 4).clone()
        boxes[:, 0::2] *= s / item.width
        boxes[:, 1::2] *= s / item.height
        if flip:
            boxes = torch.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], dim=1)
        return boxes, torch.from_numpy(item.labels.astype(np.int64)), torch.from_numpy(item.difficult.astype(bool))

    def collate(self, rows: list[int], flips: list[bool], images: list[np.ndarray]) -> Batch:
        b = len(rows)
        tg = [self.targets(i, f) for i, f in zip(rows, flips)]
        g = max([len(t[1]) for t in tg] + [1])
        boxes = torch.zeros(b, g, 4)
        labels = torch.zeros(b, g, dtype=torch.int64)
        difficult = torch.zeros(b, g, dtype=torch.bool)
        matched = []
        for k, (bx, lb, df) in enumerate(tg):
            boxes[k, : len(lb)], labels[k, : len(lb)], difficult[k, : len(lb)] = bx, lb, df
            keep = torch.ones_like(df) if self.train_difficult and self.split == "train" else ~df
            matched.append(match_anchors(self.anchors, bx, keep))
        matched_t = torch.stack(matched)
        counts = (matched_t >= 0).sum(dim=1)
        kmax = max(int(counts.max()), 1)
        pos = torch.full((b, kmax), -1, dtype=torch.int64)
        y = torch.full((b, kmax), IGNORE, dtype=torch.int64)
        for k in range(b):
            p = (matched_t[k] >= 0).nonzero().flatten()
            pos[k, : len(p)] = p
            y[k, : len(p)] = labels[k, matched_t[k, p]]
        x = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))).float().div_(255.0)
        orig = torch.tensor([[self.items[i].height, self.items[i].width] for i in rows], dtype=torch.int64)
        extra = {"boxes": boxes, "labels": labels, "difficult": difficult, "num_objects": torch.tensor([len(t[1]) for t in tg]),
                 "orig_size": orig, "matched": matched_t, "pos_anchor": pos, "split": self.split}
        return Batch(x, y, torch.tensor(rows, dtype=torch.int64), extra)

    def __iter__(self) -> Iterator[Batch]:
        (plan, flips), self._plan = self._batches(), None
        fls = [[bool(flips[i]) if flips is not None else False for i in rows] for rows in plan]
        batches = decoded(self.load, [list(zip(rows, fl)) for rows, fl in zip(plan, fls)], self.num_workers, "natbench-voc")
        for rows, fl, images in zip(plan, fls, batches):
            yield self.collate(rows, fl, images)


def carve_validation(items: Sequence[VOCItem], fraction: float, seed: int) -> tuple[list[VOCItem], list[VOCItem]]:
    """``(train, val)``: ``round(fraction * n)`` images (at least 1 when fraction > 0) drawn with ``seed``."""
    n = len(items)
    k = min(max(1, int(round(fraction * n))), n - 1) if fraction > 0 else 0
    held = set(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist()) if k else set()
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]
