"""MART: Misclassification Aware adveRsarial Training (Wang, Zou, Yi, Bailey, Ma, Gu, ICLR 2020), the
MART objective of the paper's Sec. 3 (BCE on x' plus the misclassification-weighted KL), exactly as
YisenWang/MART @ 2d83e17 ``mart.py`` (notes/algorithms.md Sec. 4).

Outer loss (train mode; clean forward first, then adversarial, as the reference)::

    p' = softmax(f(x')),  p = softmax(f(x))
    y^ = argmax_{k != y} p'_k                        # via the top-2 of p' (reference: argsort[:, -2:])
    BCE = CE(f(x'), y) - mean_i log(1.0001 - p'_{i, y^_i} + 1e-12)
    KLw = (1/B) sum_i [ sum_k p_ik (log p_ik - log(p'_ik + 1e-12)) ] * (1.0000001 - p_{i, y_i})
    L   = BCE + beta * KLw

The KL direction is KL(clean || adv); the misclassification weight ``1 - p_y(x)`` uses the *clean*
probabilities and is **not** detached (its gradient flows, as in the reference). The clean branch
has no CE term: clean information enters only through the KL.

``ce_on = {"adv"}``: the BCE already contains ``CE(f(x'), y)`` (plus the margin term), so a
regularizer that completes CE over X u X' (NAT) adds CE on clean inputs only.

Inner maximisation (notes Sec. 4.1), with BatchNorm in **eval** mode: start at
``x + 0.001 * N(0, I)`` (drawn from the run's generator; no clamp before the first step), then
``steps`` times ascend **CE** (not KL) with signed steps of ``step_size``, projecting onto the
eps-ball and [0, 1] each step; a final clamp to [0, 1] as the reference (a no-op after >= 1 step).
The reference differentiates the batch-mean CE; the sum used here has the same sign gradient.

Defaults: ``beta = 6.0`` as ``train_wideresnet.py`` (WRN-34-10); ``train_resnet.py`` (ResNet-18)
uses 5.0 with lr 0.01 and weight decay 3.5e-3. The two recipes are the cifar10 profiles ``mart``
(ResNet-18, the task's architecture; it sets ``mart.beta=5.0``) and ``mart-wrn`` (it sets
``model.arch=wrn34_10``; beta 6), so a recipe never runs on the other script's architecture unless
``--set model.arch`` says so. Other profiles (NAT's ``paper``) keep beta 6. ``steps``/``step_size``
default to the task's threat model (the reference's CIFAR values are 10 steps of 0.007 at eps 0.031).

**L2** (deviation: MART's reference, YisenWang/MART, is L-inf only). In an L2 threat model the inner
maximisation is PGD-L2 from the same Gaussian start: ``steps`` normalised-gradient steps
``x' + step_size * g / ||g||_2`` on the CE, each scaled into the L2 ball and clamped to [0, 1]
(:func:`natbench.defenses._common.gaussian_start_ascent` with ``norm="l2"``), with the task's L2
``train_step_size``; the outer MART loss is unchanged. L1: refused at resolve time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..contracts import Batch, LossOut, cached_logits
from ._common import attack_budget, bn_mode, gaussian_start_ascent


def mart_parts(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three terms of the MART loss: ``ce_adv``, ``margin`` (BCE = ce_adv + margin) and ``kl_w``."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.topk(adv_probs, 2, dim=1).indices  # [:, 0] largest, [:, 1] second largest
    y_hat = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])  # most probable wrong class
    ce_adv = F.cross_entropy(logits_adv, y)
    margin = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), y_hat)  # -mean_i log(1.0001 - p'_{i,y^} + 1e-12)
    nat_probs = F.softmax(logits_clean, dim=1)
    true_probs = nat_probs.gather(1, y.long().view(-1, 1)).squeeze(1)  # p_y(x), not detached
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)  # KL(clean || adv) per sample
    kl_w = (kl * (1.0000001 - true_probs)).sum() / len(y)
    return {"ce_adv": ce_adv, "margin": margin, "kl_w": kl_w}


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """``BCE(f(x'), y) + beta * KLw`` (see the module docstring)."""
    t = mart_parts(logits_clean, logits_adv, y)
    return t["ce_adv"] + t["margin"] + float(beta) * t["kl_w"]


class MART:
    name = "mart"
    norms = ("linf", "l2")  # L2: natbench's PGD-L2 reading of the inner max (the reference is L-inf only)
    requires = frozenset({"logits"})
    provides = frozenset({"x_adv", "logits_clean", "logits_adv"})
    ce_on = frozenset({"adv"})  # the BCE contains CE(f(x'), y); there is no clean CE term
    select_on = "robust"

    @dataclass(frozen=True)
    class Params:
        beta: float = 6.0  # weight of the weighted KL (train_wideresnet.py; train_resnet.py uses 5.0: cifar10 profile mart sets it)
        steps: int | None = None  # inner CE steps; None: the task's threat_model.train_steps
        step_size: float | None = None  # None: the task's threat_model.train_step_size
        init_std: float = 0.001  # std of the Gaussian start around x
        attack_bn: Literal["train", "eval"] = "eval"  # MART attacks with running BN statistics

    def __init__(self, params: "MART.Params | None" = None):
        self.params = params or self.Params()

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        p, tm = self.params, task.threat
        with bn_mode(model, p.attack_bn):
            objective = task.objective(model, batch, "ce")  # per-sample CE(f(x'), y)
            steps, step_size = attack_budget(p, tm)
            cache["x_adv"] = gaussian_start_ascent(lambda z: objective(z).sum(), batch.x, eps=tm.eps, steps=steps,
                                                   step_size=step_size, init_std=p.init_std, generator=generator,
                                                   norm=tm.norm)

    def adaptive_loss(self, inp) -> torch.Tensor:
        """Its training loss per sample with the attacked input as x' (the batch means of
        :func:`mart_parts` taken per sample): ``BCE(f(x'), y) + beta * KL(p(x) || p(x')) (1 - p_y(x))``."""
        z, z_adv, y = inp.logits_clean(), inp.logits_adv, inp.batch.y
        adv_probs = F.softmax(z_adv, dim=1)
        top2 = torch.topk(adv_probs, 2, dim=1).indices
        y_hat = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
        bce = F.cross_entropy(z_adv, y, reduction="none") - torch.log(1.0001 - adv_probs.gather(1, y_hat.view(-1, 1)).squeeze(1) + 1e-12)
        nat_probs = F.softmax(z, dim=1)
        kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
        return bce + self.params.beta * kl * (1.0000001 - nat_probs.gather(1, y.long().view(-1, 1)).squeeze(1))

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        z = cached_logits(model, batch, task, cache, "clean", batch.x)
        z_adv = cached_logits(model, batch, task, cache, "adv", cache["x_adv"])
        t = mart_parts(z, z_adv, batch.y)
        loss = t["ce_adv"] + t["margin"] + self.params.beta * t["kl_w"]
        return LossOut(loss, {"ce_adv": t["ce_adv"].item(), "mart_bce": (t["ce_adv"] + t["margin"]).item(),
                              "mart_kl": t["kl_w"].item()})
