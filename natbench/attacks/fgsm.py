"""FGSM: one signed-gradient step of size eps.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015:
``x_adv = clip_[0,1](x + eps * sign(grad_x L(x, y)))``. With ``random_start`` the step is taken from
``x + U(-eps, eps)`` and projected back to the eps-ball (the FGSM-RS start of Wong, Rice & Kolter,
ICLR 2020, with step eps). Threat model: L-inf ball of radius eps, images in [0, 1].
Matches ``torchattacks.FGSM`` exactly when ``random_start`` is False.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps, project_linf, signed_grad, uniform_start
from natbench.contracts import Objective


class FGSM(LinfAttack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015); default: no random start."""

    name = "fgsm"
    objective_kind = "ce"

    @dataclass(frozen=True)
    class Params:
        random_start: bool = False  # start from x + U(-eps, eps) (FGSM-RS), then project

    def __call__(
        self, objective: Objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None
    ) -> Tensor:
        eps = check_eps(eps)
        x = x.detach()
        if not self.params.random_start:
            return torch.clamp(x + eps * signed_grad(objective, x), min=0, max=1).detach()
        x0 = uniform_start(x, eps, generator)
        return project_linf(x0 + eps * signed_grad(objective, x0), x, eps).detach()
