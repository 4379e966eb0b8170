"""DAG, Dense Adversary Generation: Xie, Wang, Zhang, Zhou, Xie, Yuille, "Adversarial Examples for
Semantic Segmentation and Object Detection", ICCV 2017 (Algorithm 1; notes/algorithms.md Sec. 11.2),
on SSD's default boxes (objective kind ``anchors`` of the detection task).

Targets t (``targets: positive``, the default): the anchors matched to a (non-difficult) ground-truth
box by SSD's matcher (IoU >= 0.5, plus each box's best anchor), each with the true label l_t of its
box; Xie et al. take the region proposals with enough IoU with a ground-truth box, SSD's matched
anchors are their one-stage counterpart. ``targets: all`` uses every anchor, background-matched ones
with true label 0, as RobustDet's ``attack/DAG.py`` (the one DAG-on-SSD code) does. Each target gets
an adversarial label l'_t drawn uniformly from the other classes (background included, as RobustDet;
``adv_background: false`` excludes it), from the attack's generator.

Iteration m (at most ``steps`` = 150, RobustDet's count; Xie et al.: 150-200): the active targets are
those still classified as their true label (argmax of the class logits == l_t); stop when none is
left. The step ascends ``sum_{t active} z_{l'_t}(x_m, t) - z_{l_t}(x_m, t)`` (Xie et al.'s
``f_l - f_l'`` minimised; RobustDet's ``CE(z, l) - CE(z, l')`` is the same quantity, the log-sum-exp
cancels): ``r_m = gamma / ||g_m||_inf * g_m`` per image, gamma = 0.5 on the 0-255 scale (0.5/255
here), ``r = sum_m r_m``. There is **no eps projection during the iterations** (as the original):
each step evaluates the model at ``x_m = clip_[0,1](x + r)`` (Xie et al.'s ``X + r``, kept a valid
image; RobustDet evaluates each step at ``x + r_m`` of the previous step only, a quirk not copied).
Images without active targets stop moving (their step is 0).

Output: the raw perturbation can exceed eps (up to ``steps * gamma``); the returned image is
``clip_[0,1](x + clip(r, -eps, eps))`` (inside the threat model; this is what natbench evaluates) and
the raw one ``clip_[0,1](x + r)`` is kept as ``last_raw`` (with ``last_iterations``), which the
detection task evaluates too (``mAP_raw``) and whose L-inf norm it records (``raw_linf_mean`` /
``raw_linf_max``). The attack never sees the model, so it cannot change its mode (the evaluation
runs it in eval mode, as RobustDet).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.errors import ConfigError


def wrong_labels(labels: Tensor, num_classes: int, background: bool, generator: torch.Generator | None) -> Tensor:
    """A label != ``labels`` per entry, uniform over the other classes (over the other foreground
    classes when ``background`` is False), drawn with ``generator``."""
    device = labels.device if generator is None else generator.device
    u = torch.rand(labels.shape, generator=generator, device=device).to(labels.device)
    if background:  # {0..C-1} \ {l}
        r = (u * (num_classes - 1)).long().clamp(max=num_classes - 2)
        return r + (r >= labels).long()
    fg_true = labels > 0  # {1..C-1} \ {l}: C-2 choices for a foreground l, C-1 for background l = 0
    k = torch.where(fg_true, torch.full_like(labels, num_classes - 2), torch.full_like(labels, num_classes - 1))
    r = (u * k).long().clamp(max=num_classes - 2) + 1
    return torch.where(fg_true, r + (r >= labels).long(), r)


class DAG(LinfAttack):
    name = "dag"
    objective_kind = "anchors"

    @dataclass(frozen=True)
    class Params:
        steps: int = 150  # iteration cap (RobustDet: 150; Xie et al.: 150-200)
        gamma: float = 0.5 / 255  # L-inf size of each normalised step (0.5 on the 0-255 scale, Xie et al.)
        targets: Literal["positive", "all"] = "positive"  # matched anchors (Xie et al.'s proposals) or every anchor (RobustDet)
        adv_background: bool = True  # the adversarial label may be the background (RobustDet)

    def __init__(self, params: "DAG.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 0 or not p.gamma > 0 or p.targets not in ("positive", "all"):
            raise ConfigError(f"attack 'dag' needs steps >= 0, gamma > 0 and targets positive|all; got {p}.")
        self.last_raw: Tensor | None = None
        self.last_iterations = 0

    def __call__(self, objective: Any, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        p = self.params
        for attr in ("labels", "positive", "num_classes"):
            if not hasattr(objective, attr):
                raise ConfigError(f"attack 'dag' needs the detection task's 'anchors' objective (got {type(objective).__name__})")
        x = x.detach()
        true = objective.labels
        targets = objective.positive if p.targets == "positive" else torch.ones_like(objective.positive)
        adv = wrong_labels(true, objective.num_classes, p.adv_background or p.targets == "all", generator)
        r = torch.zeros_like(x)
        it = 0
        for it in range(1, p.steps + 1):
            xm = (x + r).clamp(0.0, 1.0).requires_grad_(True)
            with torch.enable_grad():
                z, _ = objective(xm)
                active = targets & (z.argmax(dim=-1) == true)
                if not bool(active.any()):
                    it -= 1
                    break
                gain = z.gather(-1, adv.unsqueeze(-1)).squeeze(-1) - z.gather(-1, true.unsqueeze(-1)).squeeze(-1)
                (g,) = torch.autograd.grad((gain * active).sum(), xm)
            norm = g.abs().flatten(1).amax(dim=1).view(-1, *([1] * (x.dim() - 1)))
            r = r + torch.where(norm > 0, g * (p.gamma / norm.clamp_min(1e-30)), torch.zeros_like(g))
        self.last_iterations = it
        self.last_raw = (x + r).clamp(0.0, 1.0).detach()
        return (x + r.clamp(-eps, eps)).clamp(0.0, 1.0).detach()
