"""Shared loop of the detection task-loss attacks (``det-cls``, ``det-loc``): L-inf PGD on one task loss.

Zhang & Wang (ICCV 2019, "Towards Adversarially Robust Object Detection", notes/algorithms.md Sec.
11.1) attack a detector on each of its task losses separately: ``A_cls`` maximises the
classification loss, ``A_loc`` the localisation loss. The objective comes from the detection task
(objective kinds ``det_cls`` / ``det_loc``: the image's own SSD MultiBoxLoss term, hard-negative
mined CE or smooth L1 on the matched anchors, divided by its number of matched anchors); the attack
never sees the model.

Update (RobustDet ``attack/PGD.py``, the one public MTD implementation, and natbench's PGD)::

    x' <- clip_[0,1]( x + clip_[-eps, eps]( x' + step_size * sign(grad) - x ) )

Defaults: 10 steps of 2/255 (eps/4) from the clean image (no random start, as RobustDet's attacks,
which start at x). The MTD paper's evaluation budget is not public (notes Sec. 14.5); RobustDet's
``eval_attack.py`` runs 20 steps of size eps (8/255), one image at a time. natbench uses the PGD-10
budget of its classification suites (10 steps of eps/4 travel 20/255 > 2 eps, so the whole ball is
reachable; a step of eps only visits the corners of the ball): ``--set``-free in a suite entry, e.g.
``{attack: det-cls, params: {steps: 20, step_size: 8/255}}`` reproduces RobustDet's.

The caller sets the model's mode (the detection task's evaluation: eval mode, BatchNorm on running
statistics, as RobustDet puts the model in eval() during attack steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.attacks.pgd import pgd_linf
from natbench.contracts import Objective
from natbench.errors import ConfigError


class DetectionPGD(LinfAttack):
    """Base of ``det-cls`` / ``det-loc``; subclasses set ``name`` and ``objective_kind`` (both share ``Params``)."""

    name: ClassVar[str] = "det-pgd"
    objective_kind: ClassVar[str] = "det_total"

    @dataclass(frozen=True)
    class Params:
        steps: int = 10  # PGD steps (RobustDet's evaluation: 20)
        step_size: float = 2 / 255  # absolute step, eps/4 at 8/255 (RobustDet's evaluation: 8/255)
        random_start: bool = False  # start at x, as RobustDet's attacks
        restarts: int = 1  # with random_start: keep per image the restart with the highest loss

    def __init__(self, params=None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 0 or not p.step_size >= 0 or p.restarts < 1:
            raise ConfigError(f"attack '{self.name}' needs steps >= 0, step_size >= 0 and restarts >= 1; got {p}.")

    def __call__(self, objective: Objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        p = self.params
        return pgd_linf(objective, x, eps=check_eps(eps), steps=p.steps, step_size=float(p.step_size),
                        random_start=p.random_start, restarts=p.restarts, generator=generator)
