"""Adaptive attack: APGD or PGD that maximises the evaluated defense's *own training objective*.

An attacker who knows the defense attacks what it was trained on (Athalye, Carlini & Wagner, ICML
2018, Sec. 5; Tramer et al., "On Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020).
The NAT paper's Appendix D (Eq. 14, Table 6) does this for NAT with PGD/APGD on

    CE(f_t(x + delta), y) - omega * KL( softmax_tau(f_t(x + delta)) || softmax_tau(f_a(x + delta)) )

at 10, 20, 50 and 100 iterations. natbench derives the objective from the composition of the run
(objective kind ``"defense"``, a :class:`natbench.contracts.DefenseObjective` built by
:meth:`natbench.compose.Composite.adaptive_objective`): the per-sample sum of every base defense's and
regularizer's ``adaptive_loss`` at the attacked input, e.g. ``pgd-at`` -> CE, ``pgd-at+nat`` -> Eq. 14
(the gradient flows through the frozen adversary model too), ``trades`` -> ``CE(f(x)) + beta KL(p(x) ||
p(x'))``, ``vanilla`` -> CE (so ``adaptive`` on a vanilla model is APGD-CE).

``method``:

- ``apgd`` (default, Table 6): APGD (Croce & Hein 2020, Algorithm 1) with its step-size schedule and
  checkpoints (:func:`natbench.attacks.apgd.apgd_single_run`), run as APGD-CE is run by AutoAttack:
  only points the model classifies correctly are attacked, each restart only the points still
  robust, a sample counts as fooled as soon as an iterate is misclassified and then leaves the batch
  (``early_stop``); returns the first misclassified iterate there and the clean input elsewhere.
- ``pgd``: L-inf PGD (uniform start, step ``step_size``, default eps/4) on the same objective;
  returns the last iterate (the restart with the highest final objective per sample).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps, resolve_step
from natbench.attacks.apgd import apgd_single_run
from natbench.attacks.pgd import pgd_linf
from natbench.errors import ConfigError


class Adaptive(LinfAttack):
    """APGD/PGD on the defense's own training objective (NAT paper Eq. 14, Table 6)."""

    name: ClassVar[str] = "adaptive"
    objective_kind: ClassVar[str] = "defense"

    @dataclass(frozen=True)
    class Params:
        method: Literal["apgd", "pgd"] = "apgd"  # optimiser: APGD (NAT Table 6) or PGD
        steps: int = 100  # iterations (Table 6: 10, 20, 50, 100)
        restarts: int = 1  # APGD: runs on the still-robust points; PGD: keep the best final objective
        rho: float = 0.75  # APGD's oscillation threshold for halving the step (original: 0.75)
        step_size: float | None = None  # PGD only; None: eps/4
        random_start: bool = True  # PGD only: U(-eps, eps) start

    def __init__(self, params: "Adaptive.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.method not in ("apgd", "pgd"):
            raise ConfigError(f"attack '{self.name}': method must be apgd or pgd, got {p.method!r}")
        if p.steps < 1 or p.restarts < 1 or not (0 < p.rho < 1) or (p.step_size is not None and not p.step_size >= 0):
            raise ConfigError(f"attack '{self.name}' needs steps >= 1, restarts >= 1, 0 < rho < 1, step_size >= 0; got {p}.")

    def __call__(self, objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        loss_logits = getattr(objective, "loss_logits", None)
        if not callable(loss_logits) or getattr(objective, "y", None) is None:
            raise ConfigError(f"attack '{self.name}' needs objective kind 'defense' (the run's composed training loss), "
                              f"got {type(objective).__name__}; drop the suite's 'objective:' override for it")
        p = self.params
        if p.method == "pgd":
            return pgd_linf(objective, x, eps=eps, steps=p.steps, step_size=resolve_step(p.step_size, eps),
                            random_start=p.random_start, restarts=p.restarts, generator=generator)
        x = x.detach()
        y = objective.y.to(x.device).long()
        with torch.no_grad():
            robust = loss_logits(x, None)[1].argmax(1) == y
        adv = x.clone()
        for _ in range(p.restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            _, acc, _, adv_curr = apgd_single_run(
                None, x[idx], y[idx], None, eps=eps, n_iter=p.steps, rho=p.rho, generator=generator,
                joint=lambda xa, rows, idx=idx: loss_logits(xa, idx[rows]), early_stop=True,
            )
            fooled = ~acc
            robust[idx[fooled]] = False
            adv[idx[fooled]] = adv_curr[fooled]
        return adv
