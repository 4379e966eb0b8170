"""Shared loop of the re-identification metric attacks (``sma``, ``fna``, ``ifgsm``).

Each is L-inf projected signed-gradient ascent (:func:`natbench.attacks.pgd.pgd_linf`: step
``x' <- clip_[0,1](clip_{x +- eps}(x' + step_size * sign(grad)))``, the advertorch ``LinfPGDAttack``
update of CEA-LIST/adv-reid and the I-FGSM of Bai et al.) on an objective the re-id task builds from
the attack's ``objective_kind`` and the guides (clean features of the query / gallery / batch); the
attack never sees the model (notes/algorithms.md Sec. 10).

Common parameters (every metric attack's ``Params``):

- ``steps`` 16 and the two eps of the NAT paper's Table 12 (8/255 and 10/255, as suite entries);
- ``step_size`` 1/255 (absolute): the step of both reference codes (advertorch ``eps_iter=1/255`` in
  adv-reid, ``alpha=1`` in 0-255 units in Bai's ``Gen_Adv.py``). With 16 steps the attack can travel
  16/255, beyond both eps, so the whole ball is reachable; an eps-relative step (eps/8) would give
  the same 1/255 at 8/255 but a different one at 10/255, which the references do not do;
- ``eps``: an override of the evaluation eps (suite entries have no eps field; the task's
  ``evaluate`` and this attack use it instead of the eps they are given when it is set);
- ``side``: which side the task attacks (``query``, the default of both references' query attacks
  and of the issue; ``gallery`` as Bai et al.'s original; ``both``).

Deviation: the references clip to the batch's min/max (adv-reid) or to [0, 1] (Bai); natbench clips
to [0, 1], the threat model of every attack here.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.attacks.pgd import pgd_linf
from natbench.contracts import Objective
from natbench.errors import ConfigError

SIDES = ("query", "gallery", "both")


class MetricAttack(LinfAttack):
    """Base of the metric attacks; subclasses set ``name``, ``objective_kind`` and ``Params``."""

    name: ClassVar[str] = "metric"
    objective_kind: ClassVar[str] = "sma"

    def __init__(self, params=None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 0 or not p.step_size >= 0 or (p.eps is not None and not 0 <= p.eps <= 1) or p.side not in SIDES:
            raise ConfigError(f"attack '{self.name}' needs steps >= 0, step_size >= 0, eps in [0, 1] or null and side "
                              f"one of {', '.join(SIDES)}; got {p}.")

    def __call__(self, objective: Objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        p = self.params
        eps = check_eps(p.eps if p.eps is not None else eps)
        return pgd_linf(objective, x, eps=eps, steps=p.steps, step_size=float(p.step_size),
                        random_start=p.random_start, restarts=1, generator=generator)
