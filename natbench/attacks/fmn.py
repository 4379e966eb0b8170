"""FMN: the Fast Minimum-Norm attack in L2, L-inf and L1 (a minimum-norm attack, see :mod:`._minnorm`).

Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm
Constraints", NeurIPS 2021 (Algorithm 1), following the authors' code
(``pralab/Fast-Minimum-Norm-FMN-Attack : src/attacks/fmn.py``, the same algorithm the authors
contributed to foolbox 3.3 as ``L2FMNAttack``/``LInfFMNAttack``/``L1FMNAttack``), untargeted, no
initial attack (delta starts at 0). Per step ``k`` of ``K`` (``c_k = (1 + cos(pi k / K)) / 2``):

    alpha_k = alpha_min + (alpha_max - alpha_min) c_k       # step size, cosine-annealed
    gamma_k = 0.001 + (gamma - 0.001) c_k                    # eps step, cosine-annealed
    m = z_y - max_{j != y} z_j at x + delta,  g = grad_delta of -m
    record delta as the best if misclassified and ||delta||_p <= the best so far
    eps = min(eps (1 - gamma_k), ||best||_p)        if misclassified now
          eps (1 + gamma_k)                         elif misclassified once
          ||delta||_p + |m| / ||grad m||_q          else (q the dual norm: a linear step to the boundary)
    eps = min(eps, the largest norm in the box)
    delta = clip_[0,1](x + proj_{||.||_p <= eps}(delta + alpha_k g / ||g||_2)) - x

The gradient is normalised by its L2 norm in every norm (as the authors' ``normalize``); the L1
projection is the Euclidean one onto the L1 ball (Duchi et al., ICML 2008), as the authors'.
Defaults: ``steps = 100`` (foolbox's default for the authors' class; their repository's is 10,
their paper runs up to 1000 and shows most of the decrease within the first 100), ``alpha_max = 1``,
``alpha_min = alpha_max / 100``, ``gamma = 0.05``. The iterate of the last step is not evaluated
(as the authors'). Deviation: a point whose margin and gradient are both 0 gets eps ``inf`` (then
the box's largest norm) instead of the authors' NaN.

Measured weakness (``benchmarks/minnorm_curve.py``, a quick-trained digits CNN, L2): on about a third
of the clean-correct points no iterate is ever misclassified, at 100 steps and at 1000. Before the
first success the eps rule ``||delta|| + |m| / ||grad m||`` lets the projected step only reach the
linear estimate of the boundary, which undershoots, so the margin shrinks towards 0 from the correct
side; foolbox's FMN does the same per sample. Such points count as robust at every eps (norm inf),
so FMN's ``accuracy@e`` can lie far above PGD's; read it beside the worst case over attacks.

Test: ``tests/test_fmn.py`` (foolbox's classes per sample; the analytic distances of a linear model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from natbench.attacks._base import lp_norms
from natbench.attacks._minnorm import MinNormAttack, margin
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError

DUAL = {"l2": "l2", "linf": "l1", "l1": "linf"}


def project_l1_ball(v: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v`` onto ``{||u||_1 <= eps_i}`` (Duchi et al., ICML 2008)."""
    flat = v.flatten(1)
    inside = flat.abs().sum(1) <= eps
    mu = flat.abs().sort(dim=1, descending=True).values
    cums = mu.cumsum(1)
    j = torch.arange(1, flat.shape[1] + 1, device=v.device, dtype=v.dtype)
    # rho: the largest j with mu_j > (sum_{i<=j} mu_i - eps) / j (at least 1)
    rho = ((mu * j > cums - eps.view(-1, 1)) * j).amax(1).clamp(min=1)
    theta = (cums.gather(1, (rho - 1).long().view(-1, 1)).squeeze(1) - eps) / rho
    proj = flat.sign() * (flat.abs() - theta.view(-1, 1)).clamp(min=0)
    return torch.where(inside.view(-1, 1), flat, proj).view_as(v)


def project(delta: Tensor, eps: Tensor, norm: str) -> Tensor:
    """``delta`` projected onto the ``norm`` ball of per-row radius ``eps``."""
    view = (-1, *([1] * (delta.dim() - 1)))
    if norm == "linf":
        e = eps.view(view)
        return torch.maximum(torch.minimum(delta, e), -e)
    if norm == "l2":
        n = lp_norms(delta, "l2").clamp(min=1e-12)
        return delta * torch.clamp(eps / n, max=1.0).view(view)
    return project_l1_ball(delta, eps)


def fmn(objective: LogitsObjective, x: Tensor, y: Tensor, *, norm: str, steps: int, alpha_max: float,
        alpha_min: float, gamma: float) -> tuple[Tensor, Tensor]:
    """Algorithm 1 of Pintor et al. (module docstring): ``(x + best delta, its norm)`` per row, the
    norm ``inf`` (and the point ``x``) where no step was misclassified."""
    x = x.detach()
    view = (-1, *([1] * (x.dim() - 1)))
    delta = torch.zeros_like(x)
    eps = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
    worst = lp_norms(torch.maximum(x, 1 - x), norm)
    best_norm, best = worst.clone(), torch.zeros_like(x)
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for k in range(steps):
        c = (1 + math.cos(math.pi * k / steps)) / 2
        alpha = alpha_min + (alpha_max - alpha_min) * c
        g_k = 0.001 + (gamma - 0.001) * c
        with torch.enable_grad():
            d = delta.detach().requires_grad_(True)
            logits = objective(x + d)
            m = margin(logits, y)
            (grad,) = torch.autograd.grad(-m.sum(), d)
        m = m.detach()
        adv = logits.detach().argmax(1) != y
        size = lp_norms(delta, norm)
        better = adv & (size <= best_norm)
        found |= adv
        best_norm = torch.where(better, size, best_norm)
        best = torch.where(better.view(view), delta, best)
        to_boundary = torch.nan_to_num(m.abs() / lp_norms(grad, DUAL[norm]), nan=float("inf"))
        eps = torch.where(adv, torch.minimum(eps * (1 - g_k), lp_norms(best, norm)),
                          torch.where(found, eps * (1 + g_k), size + to_boundary))
        eps = torch.minimum(eps, worst)
        step = grad / lp_norms(grad, "l2").clamp(min=1e-12).view(view)
        delta = project(delta + alpha * step, eps, norm)
        delta = torch.clamp(x + delta, 0, 1) - x
    norms = torch.where(found, lp_norms(best, norm), torch.full_like(best_norm, float("inf")))
    return (x + best).detach(), norms


class FMN(MinNormAttack):
    """Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021) in L2, L-inf or L1: a minimum-norm attack."""

    name = "fmn"
    norms = ("linf", "l2", "l1")

    @dataclass(frozen=True)
    class Params:
        steps: int = 100  # foolbox's default for the authors' FMN (see the module docstring)
        alpha_max: float = 1.0  # initial step size (cosine-annealed to alpha_min)
        alpha_min: float | None = None  # None: alpha_max / 100 (the authors')
        gamma: float = 0.05  # initial eps step (cosine-annealed to 0.001)
        eps_grid: tuple[float, ...] | None = None  # accuracy@e for these e; None: 0.25, 0.5, 1, 2 x eps

    def __init__(self, params: "FMN.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 1 or not p.alpha_max > 0 or (p.alpha_min is not None and not p.alpha_min >= 0) \
                or not 0.001 <= p.gamma < 1:
            raise ConfigError(f"attack '{self.name}' needs steps >= 1, alpha_max > 0, alpha_min >= 0 and "
                              f"0.001 <= gamma < 1; got {p}")

    def search(self, objective, x, y, generator):
        p = self.params
        alpha_min = p.alpha_max / 100 if p.alpha_min is None else p.alpha_min
        return fmn(objective, x, y, norm=self.norm, steps=p.steps, alpha_max=p.alpha_max, alpha_min=alpha_min,
                   gamma=p.gamma)
