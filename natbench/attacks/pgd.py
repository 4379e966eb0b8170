"""PGD: projected signed-gradient ascent in the L-inf ball.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018. Each step is, exactly as ``torchattacks.PGD`` (v3.5.1)::

    x_adv = x_adv + alpha * sign(grad)            # grad of objective(x_adv).sum() w.r.t. x_adv
    x_adv = clamp(x + clamp(x_adv - x, -eps, eps), 0, 1)

Threat model: ``||x_adv - x||_inf <= eps``, images in [0, 1]. Defaults: 10 steps, step eps/4
(2/255 at eps = 8/255), uniform random start U(-eps, eps), 1 restart. torchattacks differentiates
the batch-mean CE; the sum used here has the same sign gradient.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from natbench.attacks._base import (
    LinfAttack,
    check_eps,
    project_linf,
    resolve_step,
    signed_grad,
    uniform_start,
)
from natbench.contracts import Objective
from natbench.errors import ConfigError

log = logging.getLogger(__name__)


def pgd_linf(
    objective: Objective,
    x: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run L-inf PGD; with several restarts keep, per sample, the one with the highest final loss."""
    x = x.detach()
    if not random_start and restarts > 1:
        log.debug("PGD without random start: %d restarts would be identical; running one", restarts)
        restarts = 1
    best, best_loss = None, None
    for _ in range(restarts):
        x_adv = uniform_start(x, eps, generator) if random_start else x.clone()
        for _ in range(steps):
            x_adv = project_linf(x_adv + step_size * signed_grad(objective, x_adv), x, eps)
        if restarts == 1:
            return x_adv.detach()
        with torch.no_grad():
            loss = objective(x_adv).detach()
        if best is None:
            best, best_loss = x_adv, loss
        else:
            better = loss > best_loss
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            best_loss = torch.where(better, loss, best_loss)
    return best.detach()


class PGD(LinfAttack):
    """L-inf PGD on the task's CE objective (Madry et al. 2018); matches ``torchattacks.PGD``."""

    name = "pgd"
    objective_kind = "ce"

    @dataclass(frozen=True)
    class Params:
        steps: int = 10  # gradient steps
        step_size: float | None = None  # None: eps/4
        random_start: bool = True  # U(-eps, eps) start (Madry et al. 2018)
        restarts: int = 1  # keep, per sample, the restart with the highest final loss

    def __init__(self, params: "PGD.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 0 or p.restarts < 1 or (p.step_size is not None and not p.step_size >= 0):
            raise ConfigError(
                f"attack '{self.name}' needs steps >= 0, restarts >= 1, step_size >= 0; got {p}."
            )

    def __call__(
        self, objective: Objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None
    ) -> Tensor:
        eps = check_eps(eps)
        p = self.params
        return pgd_linf(
            objective, x, eps=eps, steps=p.steps, step_size=resolve_step(p.step_size, eps),
            random_start=p.random_start, restarts=p.restarts, generator=generator,
        )
