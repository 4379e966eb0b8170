"""PGD: projected gradient ascent in the L-inf or the L2 ball (``norms = ("linf", "l2")``).

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018. In L-inf each step is, exactly as ``torchattacks.PGD`` (v3.5.1)::

    x_adv = x_adv + alpha * sign(grad)            # grad of objective(x_adv).sum() w.r.t. x_adv
    x_adv = clamp(x + clamp(x_adv - x, -eps, eps), 0, 1)

Threat model: ``||x_adv - x||_inf <= eps``, images in [0, 1]. Defaults: 10 steps, step eps/4
(2/255 at eps = 8/255), uniform random start U(-eps, eps), 1 restart. torchattacks differentiates
the batch-mean CE; the sum used here has the same sign gradient.

In L2 (the threat model's norm bound by :func:`natbench.attacks._base.with_norm`) each step is, exactly
as ``torchattacks.PGDL2`` (v3.5.1) and Madry et al.'s robustness library (:mod:`natbench.attacks._l2`)::

    x_adv = x_adv + alpha * g / (||g||_2 + 1e-10)                     # per sample
    x_adv = clamp(x + delta * min(1, eps / ||delta||_2), 0, 1),  delta = x_adv - x

from a random point of the ball (a Gaussian direction scaled by ``U(0, 1) * eps``, torchattacks'
draws). Default step eps/4, as in L-inf. The robustness library recommends ``2.5 * eps / steps``,
which is eps/4 at 10 steps (the training attack's and PGD-10's budget); for longer runs natbench keeps
eps/4 so that PGD-k in one suite differ only in k, as in L-inf (the ``more_steps_not_weaker`` check
compares them), and 20 steps of eps/4 still cross the ball's diameter 2.5 times. Restarts and
``early_stop`` work in L2 exactly as in L-inf.

``early_stop`` (opt-in, off by default: PGD-k in a suite keeps its every-point semantics, so its
numbers stay comparable to the papers'). On, a point leaves the batch at its first misclassified
iterate, which is returned for it; the others run all steps as before (the same random-start
draws, for the whole batch, so a row's trajectory is the every-point run's until it leaves). It
needs objective kind ``"logits"`` (``objective: logits`` on the suite entry) to see which points
are fooled; the loss is then ``CE(logits, y)`` per row, the classification task's ``"ce"``
objective. The flags: a point the every-point run fools is fooled here too; a point with a
misclassified iterate whose *last* iterate is classified correctly counts as fooled here and robust
there (with restarts, likewise for the kept restart). ``tests/test_pgd.py`` measures both.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from natbench.attacks._base import (
    LinfAttack,
    check_eps,
    input_grad,
    project_linf,
    resolve_step,
    uniform_start,
)
from natbench.attacks._l2 import EPS_DIV, l2_start, project_l2
from natbench.contracts import LogitsObjective, Objective
from natbench.errors import ConfigError

log = logging.getLogger(__name__)


def _sign(grad: Tensor) -> Tensor:
    return grad.sign()


def _l2_dir(grad: Tensor) -> Tensor:
    return grad / (grad.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (grad.dim() - 1))) + EPS_DIV)


#: norm -> (random start, ascent direction of a gradient, projection onto the ball and [0, 1])
STEPS = {"linf": (uniform_start, _sign, project_linf), "l2": (l2_start, _l2_dir, project_l2)}


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
    norm: str = "linf",
) -> Tensor:
    """Run PGD in ``norm`` (``linf`` by default, or ``l2``: :data:`STEPS`); with several restarts keep,
    per sample, the one with the highest final loss."""
    start, direction, project = STEPS[norm]
    x = x.detach()
    if not random_start and restarts > 1:
        log.debug("PGD without random start: %d restarts would be identical; running one", restarts)
        restarts = 1
    best, best_loss = None, None
    for _ in range(restarts):
        x_adv = start(x, eps, generator) if random_start else x.clone()
        for _ in range(steps):
            x_adv = project(x_adv + step_size * direction(input_grad(objective, x_adv)), x, eps)
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


def pgd_lp(objective: Objective, x: Tensor, *, norm: str, **kw) -> Tensor:
    """:func:`pgd_linf` in ``norm`` (the name says what it is; one implementation)."""
    return pgd_linf(objective, x, norm=norm, **kw)


def _ce_of(objective: LogitsObjective) -> Objective:
    return lambda z: F.cross_entropy(objective(z), objective.y, reduction="none")


def pgd_linf_early_stop(
    forward: Objective, y: Tensor, x: Tensor, *, eps: float, steps: int, step_size: float, random_start: bool,
    restarts: int = 1, generator: torch.Generator | None = None, norm: str = "linf",
) -> Tensor:
    """:func:`pgd_linf` on ``CE(forward(x'), y)`` where a row leaves at its first misclassified iterate
    (returned for it); the never-fooled rows get what :func:`pgd_linf` gives them."""
    start_of, direction, project = STEPS[norm]
    x = x.detach()
    y = y.to(x.device).long()
    if not random_start and restarts > 1:
        restarts = 1
    view = (-1, *([1] * (x.dim() - 1)))
    out, robust = x.clone(), torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    for _ in range(restarts):
        start = start_of(x, eps, generator) if random_start else x.clone()  # drawn for every row, as pgd_linf
        rows = robust.nonzero().squeeze(1)
        x_adv = start[rows]
        for i in range(steps + (1 if restarts > 1 else 0)):  # with restarts the last iterate is evaluated too
            if rows.numel() == 0:
                break
            with torch.enable_grad():
                xa = x_adv.detach().requires_grad_(True)
                logits = forward(xa)
                loss = F.cross_entropy(logits, y[rows], reduction="none")
                grad = torch.autograd.grad(loss.sum(), xa)[0] if i < steps else None
            fooled = logits.detach().argmax(1) != y[rows]
            out[rows[fooled]], robust[rows[fooled]] = x_adv[fooled].detach(), False
            keep = ~fooled
            rows, x_adv = rows[keep], x_adv[keep]
            if i < steps:
                x_adv = project(x_adv + step_size * direction(grad[keep]), x[rows], eps)
            else:  # the never-fooled rows keep the restart with the highest final loss (ties: the earlier)
                better = loss.detach()[keep] > best_loss[rows]
                best_loss[rows[better]] = loss.detach()[keep][better]
                out[rows[better]] = x_adv[better]
        if restarts == 1:
            out[rows] = x_adv.detach()
    return out.detach()


class PGD(LinfAttack):
    """PGD on the task's CE objective (Madry et al. 2018) in L-inf or L2; matches ``torchattacks.PGD`` /
    ``torchattacks.PGDL2``."""

    name = "pgd"
    objective_kind = "ce"
    norms = ("linf", "l2")

    def __init_subclass__(cls, **kw) -> None:
        """A subclass (CW-inf: another loss under the same loop) is L-inf only unless it lists its own
        ``norms``: an L2 version of it is a claim its own docstring and tests must make."""
        super().__init_subclass__(**kw)
        if "norms" not in cls.__dict__:
            cls.norms = ("linf",)

    @dataclass(frozen=True)
    class Params:
        steps: int = 10  # gradient steps
        step_size: float | None = None  # None: eps/4
        random_start: bool = True  # U(-eps, eps) start (Madry et al. 2018)
        restarts: int = 1  # keep, per sample, the restart with the highest final loss
        early_stop: bool = False  # opt-in: a fooled point leaves at its first misclassified iterate (needs objective: logits)

    def __init__(self, params: "PGD.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 0 or p.restarts < 1 or (p.step_size is not None and not p.step_size >= 0):
            raise ConfigError(
                f"attack '{self.name}' needs steps >= 0, restarts >= 1, step_size >= 0; got {p}."
            )

    @property
    def needs_objective(self) -> tuple[str, str] | None:
        """(objective kind, the params that require it), checked when the run is resolved: early_stop
        needs ``"logits"`` to see which rows are fooled."""
        return ("logits", "early_stop") if self.params.early_stop else None

    def __call__(
        self, objective: Objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None
    ) -> Tensor:
        eps = check_eps(eps)
        p = self.params
        if isinstance(objective, LogitsObjective) and p.early_stop:
            return pgd_linf_early_stop(
                objective, objective.y, x, eps=eps, steps=p.steps, step_size=resolve_step(p.step_size, eps),
                random_start=p.random_start, restarts=p.restarts, generator=generator, norm=self.norm,
            )
        if p.early_stop:
            raise ConfigError(f"attack '{self.name}' with early_stop needs objective kind 'logits' to see which points "
                              f"are fooled, got {type(objective).__name__}; add 'objective: logits' to the suite entry")
        if isinstance(objective, LogitsObjective):  # the classification task's "ce" objective, from the logits
            objective = _ce_of(objective)
        return pgd_linf(
            objective, x, eps=eps, steps=p.steps, step_size=resolve_step(p.step_size, eps),
            random_start=p.random_start, restarts=p.restarts, generator=generator, norm=self.norm,
        )
