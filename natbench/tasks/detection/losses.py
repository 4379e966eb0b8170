"""SSD's per-image multibox losses and the ``anchors`` objective of DAG and RAP (the package docstring)."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...contracts import Batch


def multibox_sums(cls_logits: Tensor, bbox_regression: Tensor, anchors: Tensor, boxes: Tensor, labels: Tensor,
                  matched: Tensor, box_coder: Any, neg_to_pos: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(cls_i, loc_i, n_i)`` per image: torchvision ``SSD.compute_loss``'s sums before its division
    by the batch's foreground count (the module docstring). ``boxes``/``labels``: (B, G, 4) / (B, G)
    ground truth in the model's input pixels; ``matched``: (B, A) box index per anchor, -1 background."""
    b, a, c = cls_logits.shape
    fg = matched >= 0
    idx = matched.clamp(min=0)
    target_cls = torch.where(fg, labels.gather(1, idx), torch.zeros_like(idx))
    bi, ai = fg.nonzero(as_tuple=True)
    target_reg = box_coder.encode_single(boxes[bi, idx[bi, ai]], anchors[ai])
    each = F.smooth_l1_loss(bbox_regression[bi, ai], target_reg, reduction="none").sum(dim=1)
    loc = each.new_zeros(b).index_add(0, bi, each)  # the dtype of the loss (float32 under bf16 autocast)
    ce = F.cross_entropy(cls_logits.reshape(-1, c), target_cls.reshape(-1), reduction="none").view(b, a)
    num_negative = neg_to_pos * fg.sum(dim=1, keepdim=True)
    negative = ce.detach().clone()
    negative[fg] = -float("inf")
    _, order = negative.sort(dim=1, descending=True)
    hard = order.sort(dim=1)[1] < num_negative
    zero = ce.new_zeros(())
    cls = torch.where(fg, ce, zero).sum(dim=1) + torch.where(hard, ce, zero).sum(dim=1)
    return cls, loc, fg.sum(dim=1)


class AnchorObjective:
    """Objective kind ``"anchors"``: ``x' -> (cls_logits (B, A, C), bbox_regression (B, A, 4))``,
    differentiable in ``x'``; ``labels`` (B, A) = each anchor's target class (its matched box's class,
    0 = background), ``positive`` (B, A) = matched anchors, ``num_classes`` = C (background included).
    The attack never sees the model (so it cannot change its mode); each row depends on its own image only."""

    def __init__(self, fn: Callable[[Tensor], tuple[Tensor, Tensor]], labels: Tensor, positive: Tensor, num_classes: int):
        self.fn, self.labels, self.positive, self.num_classes = fn, labels, positive, int(num_classes)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fn(x)


def ground_truth(batch: Batch, x: Tensor, net: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes in the model's input pixels, labels, matched)`` of ``batch`` for inputs ``x``."""
    boxes = batch.extra["boxes"]
    h, w = x.shape[-2:]
    mh, mw = net.size
    if (h, w) != (mh, mw):
        boxes = boxes * boxes.new_tensor([mw / w, mh / h, mw / w, mh / h])
    return boxes, batch.extra["labels"], batch.extra["matched"]


def matched_logits(cls_logits: Tensor, pos_anchor: Tensor) -> Tensor:
    """``(B, C, K)``: the logits of each image's matched anchors, zeros in the padding (package docstring)."""
    b, k = pos_anchor.shape
    c = cls_logits.shape[-1]
    reps = cls_logits.shape[0] // b
    pos = pos_anchor.repeat(reps, 1) if reps > 1 else pos_anchor
    z = cls_logits.gather(1, pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, c))
    z = torch.where((pos >= 0).unsqueeze(-1), z, torch.zeros((), dtype=z.dtype, device=z.device))
    return z.permute(0, 2, 1)
