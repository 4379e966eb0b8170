"""MTD, multi-task-domain adversarial training of an object detector: Zhang & Wang, "Towards
Adversarially Robust Object Detection", ICCV 2019 (Sec. 5, Algorithm 1; notes/algorithms.md Sec. 11.1).

A detector has two task losses, classification and localisation, and their attacks (``A_cls``,
``A_loc``) span different "task domains". MTD's inner maximisation takes, *per image*, the worse of the
two domains' adversarial examples::

    x_cls = PGD(L_cls),  x_loc = PGD(L_loc),  x' = argmax_{x'' in {x_cls, x_loc}} L_cls(x'') + L_loc(x'')

and trains on ``x'`` (the outer minimisation of the total detection loss). No code of the paper is
public; the one reproduction is RobustDet (Dong et al., ECCV 2022: ``robust/MTD.py``), which differs
in ways natbench does not copy:

- **granularity**: RobustDet compares the *batch-summed* losses, so it keeps one domain per batch;
  natbench compares per image, as the paper (``select: batch`` reproduces RobustDet's choice);
- **per step vs per attack**: RobustDet's ``mtd_forward`` runs inside its PGD loop and picks the
  domain at every step from the current image; natbench runs the two attacks to the end (the paper's
  two examples) and picks once;
- **"free" training**: RobustDet takes an SGD step after each of its 20 PGD steps (``max_iter`` counts
  them); natbench makes the examples first, then takes one optimizer step, like every natbench defense.

Inner attacks: L-inf PGD (:func:`natbench.attacks.pgd.pgd_linf`) on the detection task's per-image
objectives ``det_cls`` and ``det_loc`` (SSD's hard-negative-mined CE and smooth L1 of the matched
anchors, each divided by the image's number of matched anchors; a positive per-image factor that a
signed step ignores), from x (RobustDet's attacks start at x; ``random_start`` adds U(-eps, eps)),
``steps``/``step_size``/eps from the task's threat model unless set here. The domain choice compares
``det_total`` (the image's own total loss) at ``x_cls`` and ``x_loc``, without gradients.

**BatchNorm during the inner attack and the choice**: ``attack_bn: eval`` (default): RobustDet puts the
model in ``eval()`` for every attack step (and its choice forward) and back to ``train()`` for the
update (notes Sec. 13). SSD300-VGG16 has no BatchNorm; SSDlite and natbench's ``ssd_tiny`` have.

**Outer loss**: ``clean_weight * L(x) + (1 - clean_weight) * L(x')`` with ``L`` the task's training
loss (torchvision's SSD loss, batch mean of :meth:`DetectionTask.training_loss`), each from its own
train-mode forward. Default 0.5: RobustDet trains MTD with ``clean_mix: True``, a batch of half clean
and half adversarial images (of *different* images there, the same images here, as NAT's X u X');
``clean_weight: 0`` is adversarial-only training.

``domains`` also gives the single-domain baselines of the paper's analysis and RobustDet's other
generators: ``cls`` (``CLS_ADG``: train on A_cls examples), ``loc`` (``LOC_ADG``), ``total``
(``CON_ADG``: PGD on ``L_cls + L_loc``, i.e. PGD-AT on the total detection loss).

Composition: ``ce_on`` = {clean, adv} when ``clean_weight > 0`` (its loss has the classification loss
on both), else {adv}. So ``mtd+nat`` adds no CE of its own with the default and only NAT's nasty KL on
the matched-anchor class logits of x and x' (``task.logits``; the logits of MTD's own forwards are
reused); with ``clean_weight: 0`` NAT's completion adds a CE on the clean matched anchors (positives
only: no hard negatives, no localisation term). ``requires`` the ``detections`` capability, so the
composer refuses MTD on other tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..attacks.pgd import pgd_linf
from ..contracts import Batch, LossOut
from ..errors import ConfigError
from ._common import attack_budget, bn_mode, own_loss, synced

DOMAINS = ("mtd", "cls", "loc", "total")


class MTD:
    name = "mtd"
    requires = frozenset({"detections"})
    provides = frozenset({"x_adv", "logits_adv"})
    ce_on = frozenset({"adv"})
    select_on = "robust"

    @dataclass(frozen=True)
    class Params:
        steps: int | None = None  # inner PGD steps per domain; None: the task's threat_model.train_steps
        step_size: float | None = None  # None: the task's threat_model.train_step_size
        random_start: bool = False  # U(-eps, eps) start; RobustDet's attacks start at x
        attack_bn: Literal["train", "eval"] = "eval"  # BN mode of the inner attacks and the choice (RobustDet: eval)
        domains: Literal["mtd", "cls", "loc", "total"] = "mtd"  # mtd: per-image max of the two; cls/loc/total: one-domain AT
        select: Literal["image", "batch"] = "image"  # domain chosen per image (the paper) or per batch (RobustDet)
        clean_weight: float = 0.5  # outer loss w * L(x) + (1 - w) * L(x'); RobustDet's clean_mix (half/half): 0.5

        def validate(self, where: str) -> None:
            if not 0 <= self.clean_weight < 1:
                raise ConfigError(f"{where}.clean_weight: must be in [0, 1) (1 would train on clean images only), "
                                  f"got {self.clean_weight}")
            if self.domains not in DOMAINS:
                raise ConfigError(f"{where}.domains: one of {', '.join(DOMAINS)}")
            if self.steps is not None and self.steps < 1:
                raise ConfigError(f"{where}.steps: must be >= 1 or null")

    def __init__(self, params: "MTD.Params | None" = None):
        self.params = params or self.Params()
        self.params.validate("mtd")
        if self.params.clean_weight > 0:  # the instance's values are what the composite reads
            self.ce_on = frozenset({"clean", "adv"})
            self.provides = self.provides | {"logits_clean"}

    def _pgd(self, model, batch: Batch, task, kind: str, generator: torch.Generator) -> torch.Tensor:
        steps, step_size = attack_budget(self.params, task.threat)
        return pgd_linf(task.objective(model, batch, kind), batch.x, eps=task.threat.eps, steps=steps,
                        step_size=step_size, random_start=self.params.random_start, generator=generator)

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        p = self.params
        with bn_mode(model, p.attack_bn):
            if p.domains != "mtd":
                cache["x_adv"] = self._pgd(model, batch, task, f"det_{p.domains}", generator)
                return
            x_cls = self._pgd(model, batch, task, "det_cls", generator)
            x_loc = self._pgd(model, batch, task, "det_loc", generator)
            total = task.objective(model, batch, "det_total")
            with torch.no_grad():
                l_cls, l_loc = total(x_cls), total(x_loc)
        pick_loc = l_loc > l_cls if p.select == "image" else (l_loc.sum() > l_cls.sum()).expand_as(l_loc)
        cache["x_adv"] = torch.where(pick_loc.view(-1, *([1] * (x_cls.dim() - 1))), x_loc, x_cls)
        cache["mtd_loc_fraction"] = pick_loc.float().mean()

    def adaptive_loss(self, inp) -> torch.Tensor:
        """Its training loss per image with the attacked input as x' (the clean term is a constant):
        ``w * L_i(x) + (1 - w) * L_i(x')``, ``L_i`` the task's per-image training loss."""
        w = self.params.clean_weight
        out = (1 - w) * inp.task.task_loss(inp.model, inp.batch, inp.x_adv)
        if w > 0:
            with torch.no_grad():
                out = out + w * inp.task.task_loss(inp.model, inp.batch, inp.batch.x)
        return out

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        w = self.params.clean_weight
        adv, named = own_loss(model, batch, task, cache, "adv", cache["x_adv"], "det")
        loss = (1 - w) * adv
        if w > 0:
            clean, parts = own_loss(model, batch, task, cache, "clean", batch.x, "det")
            loss = loss + w * clean
            named.update(parts)
        if "mtd_loc_fraction" in cache:
            named["mtd_loc_fraction"] = cache["mtd_loc_fraction"]
        return LossOut(loss, synced(named))
