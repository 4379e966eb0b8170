"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu, ICLR 2018, Eq. 2.1).

``min_theta E[ max_{||delta||_inf <= eps} CE(f(x + delta), y) ]``: the inner max is PGD on the
task's CE objective with a uniform U(-eps, eps) start, ``steps`` signed steps of ``step_size``,
projection onto the eps-ball and [0, 1]; the outer loss is ``CE(f(x'), y)`` (mean over the batch)
on adversarial inputs only (on a task kind that declares its own training loss for x',
``TRAINING_LOSS_ON``: that loss; detection: classification with hard negatives plus localisation;
re-id does not declare it and keeps the identity CE, "pgd-at-style training on the identity loss").

BatchNorm during the attack: ``attack_bn="train"`` by default, as in Madry's cifar10_challenge
and locuslab/robust_overfitting (inherited by AT-AWP, notes Sec. 3.2 and 13): the attack's forward
passes use batch statistics. ``steps``/``step_size`` default to the task's threat model.

Norms: ``linf`` and ``l2`` (``norms``). In an L2 threat model the inner max is PGD-L2
(:mod:`natbench.attacks.pgd`: normalised-gradient steps of ``step_size`` from a random point of the L2
ball, projection onto the ball and [0, 1]), L2 adversarial training as Madry et al.'s robustness
library runs it; the task spec's ``threat_models.l2`` sets the budget (cifar10: eps 0.5, 10 steps of
``2.5 * eps / steps`` = 0.125, the library's step rule). L1 is refused at resolve time (no reference
recipe for L1 adversarial training in natbench).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..attacks._base import with_norm
from ..attacks.pgd import PGD
from ..contracts import Batch, LossOut
from ._common import AdvCE, attack_budget, bn_mode, outer_loss


class PGDAT(AdvCE):
    name = "pgd-at"
    norms = ("linf", "l2")  # the training attack's norms (checked at resolve time)

    @dataclass(frozen=True)
    class Params:
        steps: int | None = None  # inner PGD steps; None: the task's threat_model.train_steps
        step_size: float | None = None  # None: the task's threat_model.train_step_size
        attack_bn: Literal["train", "eval"] = "train"  # BN mode while generating x' (Madry / robust_overfitting: train)

    def __init__(self, params: "PGDAT.Params | None" = None):
        self.params = params or self.Params()

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        tm = task.threat
        steps, step_size = attack_budget(self.params, tm)
        attack = with_norm(PGD(PGD.Params(steps=steps, step_size=step_size, random_start=True)), tm.norm, "pgd-at")
        with bn_mode(model, self.params.attack_bn):
            cache["x_adv"] = attack(task.objective(model, batch, "ce"), batch.x, eps=tm.eps, generator=generator)

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        return outer_loss(model, batch, task, cache, "adv", cache["x_adv"])
