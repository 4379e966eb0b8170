"""What the minimum-norm attacks (``cw-l2``, ``fmn``) share: the contract and the metrics of their norms.

A minimum-norm attack searches, per sample, the *smallest* perturbation (in the bound norm) that
makes the model misclassify, whatever the threat model's eps. It is called like every attack,
``attack(objective, x, eps=eps, generator=g)``, and keeps the contract of every attack: the returned
``x_adv`` lies in the eps-ball; it is the minimum-norm adversarial example where that norm is
``<= eps`` and the clean ``x`` elsewhere, so flags and accuracy at the threat eps mean what they
mean for every other attack. Besides, ``attack.last_norms`` holds the per-sample minimal norms of
the last call (shape ``(B,)``, on ``x``'s device): ``0`` where the clean point is already
misclassified, ``inf`` where the search found no adversarial example.

From those norms :func:`norm_metrics` gives, for each ``e`` of the attack's ``eps_grid``, the
metric ``accuracy@<e>``: the fraction of points that are clean-correct with a minimal norm ``> e``
(the robust accuracy that attack certifies an upper bound of at ``e``, from one run), and
``median_norm``: the median minimal norm over the clean-correct points (``inf`` when the attack
failed on half of them or more). ``eps_grid`` defaults to ``(0.25, 0.5, 1, 2) x`` the run's eps.

One caveat: the search decides "misclassified" on the forward pass of the batch it runs (the rows
still correct); the evaluation's flags come from a forward of the returned batch. A point that
the search leaves exactly on the decision boundary can, by float rounding across batch shapes,
fall on the other side there, so ``accuracy`` and ``accuracy@eps`` may differ by such points.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.contracts import LogitsObjective, Objective
from natbench.errors import ConfigError

#: the default ``eps_grid``, as multiples of the run's eps
GRID_MULTIPLES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{j != y} z_j`` per row (the true class masked with -inf before the max)."""
    onehot = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    real = logits.gather(1, y.view(-1, 1)).squeeze(1)
    return real - logits.masked_fill(onehot, float("-inf")).amax(dim=1)


def grid_label(e: float) -> str:
    """The metric name of the robust accuracy at ``e``: ``accuracy@0.5``."""
    return f"accuracy@{e:g}"


def norm_metrics(norms: Tensor, grid: tuple[float, ...]) -> dict[str, float]:
    """``accuracy@<e>`` for each ``e`` of ``grid`` and ``median_norm`` from the per-sample minimal
    ``norms`` (0: clean-misclassified, inf: no adversarial example found); see the module docstring."""
    norms = norms.detach().double().cpu()
    n = len(norms)
    out = {grid_label(e): ((norms > e).double().mean().item() if n else float("nan")) for e in grid}
    correct = norms[norms > 0]
    # the lower median (torch.median), so a finite value is always a norm some point has
    out["median_norm"] = correct.median().item() if len(correct) else float("nan")
    return out


class MinNormAttack(LinfAttack):
    """Base of the minimum-norm attacks: the subclass implements :meth:`search` on the clean-correct
    rows; this class keeps the eps-ball contract and ``last_norms`` (module docstring). Its ``Params``
    must have ``eps_grid: tuple[float, ...] | None``."""

    objective_kind = "logits"
    minimum_norm: ClassVar[bool] = True
    #: per-sample minimal norms of the last call (None before the first)
    last_norms: Tensor | None = None

    def __init__(self, params=None) -> None:
        super().__init__(params)
        grid = self.params.eps_grid
        if grid is not None and (not grid or not all(math.isfinite(e) and e >= 0 for e in grid)):
            raise ConfigError(f"attack '{self.name}': eps_grid must be a non-empty list of finite numbers >= 0, got {grid}; "
                              f"leave it out for {', '.join(f'{m:g}' for m in GRID_MULTIPLES)} x eps")

    def eps_grid(self, eps: float) -> tuple[float, ...]:
        """The eps values of the ``accuracy@<e>`` metrics: ``params.eps_grid``, else multiples of ``eps``."""
        grid = self.params.eps_grid
        return tuple(m * eps for m in GRID_MULTIPLES) if grid is None else tuple(float(e) for e in grid)

    def metrics(self, norms: Tensor, eps: float) -> dict[str, float]:
        """:func:`norm_metrics` of ``norms`` (``last_norms`` of the evaluated batches) over :meth:`eps_grid`."""
        return norm_metrics(norms, self.eps_grid(eps))

    def search(self, objective: LogitsObjective, x: Tensor, y: Tensor,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(x_best, norms)`` for clean-correct rows ``x``: the smallest adversarial example found
        per row and its norm in :attr:`norm` (``inf`` and any point where none was found). Abstract:
        every registered subclass (``fmn``, ``cw-l2``) implements it."""
        raise NotImplementedError(f"{type(self).__name__} must implement search() (see natbench.attacks.fmn)")

    def __call__(self, objective: Objective, x: Tensor, *, eps: float,
                 generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        if not isinstance(objective, LogitsObjective):
            raise ConfigError(f"attack '{self.name}' needs objective kind 'logits' (the class scores), got "
                              f"{type(objective).__name__}; drop the objective of its suite entry")
        x = x.detach()
        y = objective.y.to(x.device).long()
        with torch.no_grad():
            correct = objective(x).argmax(1) == y
        norms = torch.zeros(len(x), device=x.device, dtype=x.dtype)  # a misclassified point: norm 0
        best = x.clone()
        rows = correct.nonzero().squeeze(1)
        if rows.numel():
            sub = LogitsObjective(objective, y[rows], objective.num_classes)
            adv, found = self.search(sub, x[rows], y[rows], generator)
            best[rows], norms[rows] = adv.detach(), found.to(norms.dtype)
        self.last_norms = norms
        inside = (norms <= eps).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(inside, best, x).detach()
