"""FGSM: one signed-gradient step of size eps (L-inf); in L2 the fast gradient method (FGM).

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015:
``x_adv = clip_[0,1](x + eps * sign(grad_x L(x, y)))``. With ``random_start`` the step is taken from
``x + U(-eps, eps)`` and projected back to the eps-ball (the FGSM-RS start of Wong, Rice & Kolter,
ICLR 2020, with step eps). Threat model: L-inf ball of radius eps, images in [0, 1].
Matches ``torchattacks.FGSM`` exactly when ``random_start`` is False.

L2 (``norms = ("linf", "l2")``; the norm bound by :func:`natbench.attacks._base.with_norm`): the fast
gradient method, the same single step with the gradient scaled to L2 norm eps instead of signed
(Goodfellow et al. 2015's linear view in the L2 ball; cleverhans ``fast_gradient_method(norm=2)``,
whose ``optimize_linear`` divides by ``sqrt(max(1e-12, sum(g^2)))`` per sample, as here)::

    x_adv = clip_[0,1](x + eps * g / max(1e-6, ||g||_2))

Clipping to [0, 1] only shrinks the step, so the result stays in the ball. With ``random_start`` the
step starts from a random point of the L2 ball (:func:`natbench.attacks._l2.l2_start`) and is projected
back (:func:`natbench.attacks._l2.project_l2`): the L2 analogue of FGSM-RS (natbench's; no reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps, input_grad, project_linf, signed_grad, uniform_start
from natbench.attacks._l2 import l2_start, project_l2
from natbench.contracts import Objective

#: cleverhans optimize_linear's ``avoid_zero_div`` (on the squared norm): the gradient's norm is at least 1e-6
AVOID_ZERO_DIV = 1e-12


def fgm_l2_direction(grad: Tensor) -> Tensor:
    """``g / sqrt(max(1e-12, ||g||_2^2))`` per sample (cleverhans ``optimize_linear``, ``norm=2``)."""
    sq = grad.flatten(1).pow(2).sum(dim=1).clamp_min(AVOID_ZERO_DIV)
    return grad / sq.sqrt().view(-1, *([1] * (grad.dim() - 1)))


class FGSM(LinfAttack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015); in L2 the fast gradient method. Default: no random start."""

    name = "fgsm"
    objective_kind = "ce"
    norms = ("linf", "l2")

    @dataclass(frozen=True)
    class Params:
        random_start: bool = False  # start from a random point of the eps-ball (FGSM-RS), then project

    def __call__(
        self, objective: Objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None
    ) -> Tensor:
        eps = check_eps(eps)
        x = x.detach()
        if self.norm == "l2":
            if not self.params.random_start:
                return torch.clamp(x + eps * fgm_l2_direction(input_grad(objective, x)), 0, 1).detach()
            x0 = l2_start(x, eps, generator)
            return project_l2(x0 + eps * fgm_l2_direction(input_grad(objective, x0)), x, eps).detach()
        if not self.params.random_start:
            return torch.clamp(x + eps * signed_grad(objective, x), min=0, max=1).detach()
        x0 = uniform_start(x, eps, generator)
        return project_linf(x0 + eps * signed_grad(objective, x0), x, eps).detach()
