"""PGD in the L2 ball: the pieces of the L2 threat model (used by ``pgd``, ``fgsm``, the L2 training attacks).

Madry et al., ICLR 2018, with the L2 step of their robustness library and of ``torchattacks.PGDL2``
(v3.5.1), which these functions follow step for step:

    start  x' = clamp(x + r * eps * d / ||d||_2, 0, 1),  d ~ N(0, I), r ~ U(0, 1) per sample
    step   x' = x' + alpha * g / (||g||_2 + 1e-10)         # g: gradient of the objective at x'
    proj   x' = clamp(x + delta * min(1, eps / ||delta||_2), 0, 1),  delta = x' - x

The projection scales onto the L2 ball, then clips to the image box: the result is in the ball and in
[0, 1] (clipping moves each coordinate towards x, so ``||delta||_2`` only shrinks), but it is not the
exact Euclidean projection onto ball ∩ box; torchattacks and the robustness library do the same.
"""
from __future__ import annotations

import torch
from torch import Tensor

from natbench.attacks._base import input_grad
from natbench.contracts import Objective

#: added to a gradient's norm before dividing (torchattacks.PGDL2's ``eps_for_division``)
EPS_DIV = 1e-10


def _norms(t: Tensor) -> Tensor:
    """Per-sample L2 norms, shaped to broadcast over ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Scale ``x_adv - x`` into the L2 ball of radius ``eps`` (if outside), then clamp to [0, 1]."""
    delta = x_adv - x
    factor = torch.clamp(eps / _norms(delta), max=1.0)  # a zero delta gives inf -> 1
    return torch.clamp(x + delta * factor, 0, 1)


def l2_start(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """A random point of the L2 ball (a Gaussian direction, a U(0, 1) fraction of eps), clamped to [0, 1]:
    the draws torchattacks.PGDL2 makes (``normal_`` then ``uniform_``) from the same RNG state."""
    device = x.device if generator is None else generator.device
    delta = torch.empty(x.shape, device=device, dtype=x.dtype).normal_(generator=generator)
    r = torch.empty((x.shape[0], *([1] * (x.dim() - 1))), device=device, dtype=x.dtype).uniform_(0, 1, generator=generator)
    delta = (delta * r / _norms(delta) * eps).to(x.device)
    return torch.clamp(x + delta, 0, 1)


def l2_grad(objective: Objective, x_adv: Tensor) -> Tensor:
    """The gradient of ``objective(x_adv).sum()`` divided by its per-sample L2 norm (+ 1e-10)."""
    grad = input_grad(objective, x_adv)
    return grad / (_norms(grad) + EPS_DIV)


def pgd_l2(objective: Objective, x: Tensor, *, eps: float, steps: int, step_size: float, random_start: bool,
           generator: torch.Generator | None = None) -> Tensor:
    """L2 PGD (one restart): ``steps`` normalised-gradient steps of ``step_size``, each projected."""
    x = x.detach()
    x_adv = l2_start(x, eps, generator) if random_start else x.clone()
    for _ in range(steps):
        x_adv = project_l2(x_adv + step_size * l2_grad(objective, x_adv), x, eps)
    return x_adv.detach()
