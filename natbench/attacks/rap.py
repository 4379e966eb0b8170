"""RAP, Robust Adversarial Perturbation: Li, Tian, Jia, Guo, "Robust Adversarial Perturbation on Deep
Proposal-based Models", BMVC 2018 (notes/algorithms.md Sec. 11.3), adapted to SSD's default boxes
(objective kind ``anchors`` of the detection task).

RAP attacks the region proposal network of two-stage detectors with two losses: a **label loss** that
drives down the objectness of the proposals that currently have a high objectness (the detector
"loses" its objects; DAG-like), and a **shape loss** that pulls the box-regression offsets of the
proposals that overlap an object towards fixed wrong offsets (distorting location and shape). No
RAP code exists, for SSD or at all, and the paper's thresholds, weights, target offsets and stopping
rule (a PSNR bound) could not be checked (notes Sec. 14.6), so this adaptation is natbench's:

- *objectness* of an anchor = its foreground probability ``s_a = 1 - softmax(z_a)[background]``
  (SSD has no separate objectness score); the high-objectness set H = anchors with ``s_a >
  objectness_thresh`` (0.1) at the current iterate (recomputed every step, as RAP's proposals are);
- label term (to maximise) = the mean over H of ``log p_background(a)`` (the CE towards background,
  negated): every confident anchor is pushed towards background;
- shape term = minus the mean over the matched anchors P (IoU >= 0.5 with a ground-truth box, SSD's
  matcher: RAP's "proposals that overlap an object") of ``smooth_l1(t_a, tau)`` summed over the four
  offsets, ``t_a`` the predicted (encoded) offsets and ``tau`` = ``shape_target``: by default the
  offsets of a box shifted right and down by half the default box's size and shrunk to half its width
  and height, in torchvision's box-coder units (weights 10, 10, 5, 5): ``(10 * 0.5, 10 * 0.5, 5 *
  ln 0.5, 5 * ln 0.5)``; such a box has IoU < 0.5 with its object;
- objective per image = label term + ``shape_weight`` (1) * shape term (both means, so neither
  swamps the other's signed gradient), maximised by L-inf PGD from x (RAP's imperceptibility bound
  replaced by natbench's threat model): 10 steps of 2/255 by default, the det-cls/det-loc budget.

The attack never sees the model, so it cannot change its mode (the evaluation runs it in eval mode).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.attacks.pgd import pgd_linf
from natbench.errors import ConfigError

SHAPE_TARGET = (10 * 0.5, 10 * 0.5, 5 * math.log(0.5), 5 * math.log(0.5))


def rap_loss(cls_logits: Tensor, bbox_regression: Tensor, positive: Tensor, *, objectness_thresh: float,
             shape_weight: float, shape_target: Tensor) -> Tensor:
    """Per-image RAP objective to maximise (see the module docstring)."""
    logp = F.log_softmax(cls_logits, dim=-1)
    log_bg = logp[..., 0]
    high = (1.0 - log_bg.exp()).detach() > objectness_thresh
    label = (log_bg * high).sum(dim=1) / high.sum(dim=1).clamp(min=1)
    dist = F.smooth_l1_loss(bbox_regression, shape_target.to(bbox_regression).expand_as(bbox_regression),
                            reduction="none").sum(dim=-1)
    shape = -(dist * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return label + shape_weight * shape


class RAP(LinfAttack):
    name = "rap"
    objective_kind = "anchors"

    @dataclass(frozen=True)
    class Params:
        steps: int = 10  # PGD steps (the det-cls/det-loc budget; RAP's own stopping rule is a PSNR bound)
        step_size: float = 2 / 255  # absolute step (eps/4 at 8/255)
        random_start: bool = False  # start at x
        objectness_thresh: float = 0.1  # anchors with foreground probability above this get the label loss
        shape_weight: float = 1.0  # weight of the shape term
        shape_target: tuple[float, float, float, float] = SHAPE_TARGET  # wrong target offsets (box-coder units)

    def __init__(self, params: "RAP.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 0 or not p.step_size >= 0 or not 0 <= p.objectness_thresh < 1 or p.shape_weight < 0 \
                or len(p.shape_target) != 4:
            raise ConfigError(f"attack 'rap' needs steps >= 0, step_size >= 0, 0 <= objectness_thresh < 1, "
                              f"shape_weight >= 0 and four shape_target offsets; got {p}.")

    def __call__(self, objective: Any, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        p = self.params
        if not hasattr(objective, "positive"):
            raise ConfigError(f"attack 'rap' needs the detection task's 'anchors' objective (got {type(objective).__name__})")
        target = torch.tensor(p.shape_target, dtype=x.dtype, device=x.device)
        positive = objective.positive

        def loss(z: Tensor) -> Tensor:
            cls_logits, bbox = objective(z)
            return rap_loss(cls_logits, bbox, positive, objectness_thresh=p.objectness_thresh,
                            shape_weight=p.shape_weight, shape_target=target)

        return pgd_linf(loss, x, eps=check_eps(eps), steps=p.steps, step_size=float(p.step_size),
                        random_start=p.random_start, restarts=1, generator=generator)
