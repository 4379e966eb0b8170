"""AMD, adversarial metric defense: re-identification training on metric-attack examples made online.

Bai, Li, Zhou, Li, Torr, "Adversarial Metric Attack and Defense for Person Re-identification", IEEE
TPAMI 2020 (arXiv 1901.10650), whose defense (the "metric-preserving network", called AMD in the NAT
paper) is described as online adversarial training against the adversarial metric attack. No code of
the defense is public and its text could not be checked (notes/algorithms.md Sec. 10.1 and 14.4), so
this is natbench's recipe, built from the parts that are public:

- **inner attack** (``prepare``): L-inf PGD (:func:`natbench.attacks.pgd.pgd_linf`) on the task's
  metric objective over the training batch's own P x K structure. Default ``objective: ama``: Bai et
  al.'s AMA loss ``sum_{j: y_j = y_i, j != i} mean_d (n(phi(x'_i)) - n(phi(x_j)))^2`` (push each image's
  embedding away from the clean embeddings of the other images of its identity in the batch; ``n`` =
  L2 normalisation), i.e. the attack of the paper with the batch in the role of the guides; ``sma``
  and ``fna`` (GOAT-style guides from the batch) are options. eps, steps and step size are the task's
  threat model (``threat_model.eps``, ``train_steps``, ``train_step_size``) unless set here.
- **BatchNorm during the attack**: ``attack_bn: train`` (default), as GOAT (CEA-LIST/adv-reid's
  training loop never switches to eval; notes Sec. 13) and Madry's PGD-AT: the attack's forward passes
  use batch statistics and update the running statistics, including the guide features' forward.
- **random start** U(-eps, eps) (GOAT's advertorch ``rand_init=True``; Bai's attack starts at x).
- **outer loss** (``loss``): the task's re-id loss (identity CE with label smoothing + batch-hard
  triplet, ``task.training_loss``, batch mean) on the adversarial batch only: the clean batch is
  replaced, as in GOAT ("adversarial images only") and PGD-AT. ``clean_weight > 0`` adds that weight
  times the same loss on the clean batch (then ``ce_on`` is {clean, adv}).

Composition: ``ce_on = {"adv"}``, so ``amd+nat`` adds NAT's completion ``CE(f(x), y)`` on the clean
identity logits (plain CE, as NAT's Eq. 5 on X u X') and the nasty KL on the clean and adversarial
identity logits; the triplet term stays on x' only. ``nat.joint_forward`` is not supported (AMD needs
logits and embedding from one forward). ``requires`` an embedding, so the composer refuses AMD on
classification tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..attacks.pgd import pgd_linf
from ..contracts import Batch, LossOut
from ..errors import ConfigError
from ._common import attack_budget, bn_mode, own_loss, synced


class AMD:
    name = "amd"
    requires = frozenset({"logits", "embedding"})
    provides = frozenset({"x_adv", "logits_adv", "features_adv"})
    ce_on = frozenset({"adv"})
    select_on = "robust"

    @dataclass(frozen=True)
    class Params:
        objective: Literal["ama", "sma", "fna"] = "ama"  # the inner attack's metric objective (guides from the batch)
        steps: int | None = None  # inner attack steps; None: the task's threat_model.train_steps
        step_size: float | None = None  # None: the task's threat_model.train_step_size
        random_start: bool = True  # U(-eps, eps) start (GOAT); false: start at x (Bai's attack)
        attack_bn: Literal["train", "eval"] = "train"  # BN mode while generating x' (GOAT: train)
        clean_weight: float = 0.0  # weight of the re-id loss on the clean batch (0: adversarial only)

        def validate(self, where: str) -> None:
            if self.clean_weight < 0:
                raise ConfigError(f"{where}.clean_weight: must be >= 0, got {self.clean_weight}")

    def __init__(self, params: "AMD.Params | None" = None):
        self.params = params or self.Params()
        if self.params.clean_weight > 0:  # the instance's values are what the composite reads
            self.ce_on = frozenset({"clean", "adv"})
            self.provides = self.provides | {"logits_clean", "features_clean"}

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        p, tm = self.params, task.threat
        steps, step_size = attack_budget(p, tm)
        with bn_mode(model, p.attack_bn):
            objective = task.objective(model, batch, p.objective)
            cache["x_adv"] = pgd_linf(objective, batch.x, eps=tm.eps, steps=steps, step_size=step_size,
                                      random_start=p.random_start, generator=generator)

    def adaptive_loss(self, inp) -> torch.Tensor:
        """Its training loss at the attacked input x', per sample, for the ``adaptive`` attack: the
        weighted identity CE (label smoothing as the task's) of ``f(x')``. The triplet term couples the
        samples of a batch (batch-hard mining), so, like mixup, it is left out. Needs training labels:
        re-id *evaluation* batches carry person ids that are not classes (the task refuses them)."""
        task = inp.task
        check = getattr(task, "_check_labels", None)
        if check is not None:
            check(inp.batch, "amd's adaptive objective")
        p = getattr(task, "params", None)
        eps, weight = getattr(p, "label_smooth", 0.0), getattr(p, "weight_ce", 1.0)
        return weight * torch.nn.functional.cross_entropy(inp.logits_adv, inp.batch.y, reduction="none",
                                                          label_smoothing=float(eps))

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        loss, named = own_loss(model, batch, task, cache, "adv", cache["x_adv"], "reid")
        if self.params.clean_weight > 0:
            clean, parts = own_loss(model, batch, task, cache, "clean", batch.x, "reid")
            loss = loss + self.params.clean_weight * clean
            named.update(parts)
        return LossOut(loss, synced(named))
