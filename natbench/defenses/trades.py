"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, ICML 2019, Eq. 5), as yaodongyu/TRADES trades.py.

Outer loss (train mode, neither branch detached)::

    L = CE(f(x), y) + beta * (1/B) * sum_i KL( p(x_i) || p(x'_i) )

Inner maximisation (notes Sec. 2.2), with BatchNorm in **eval** mode: start at
``x + 0.001 * N(0, I)`` (no clamp before the first step), then ``steps`` times ascend
``KL_sum(p(x) || p(x'))`` with signed steps of ``step_size``, projecting onto the eps-ball and
[0, 1]. The reference recomputes f(x) every step; in eval mode with fixed weights it does not
change, so natbench computes it once (same values, fewer forward passes). Only ``d/dx'`` is used.
With ``attack_bn="train"`` f(x) would depend on the batch and is recomputed each step.

**Forward passes of the outer loss** (``forwards``). ``trades.py`` runs three train-mode forwards per
step: ``f(x)`` for the CE, ``f(x')``, and ``f(x)`` again as the KL's target. In train mode BatchNorm
normalises with the batch's statistics, so the third pass gives the same logits as the first and the
loss and its gradient are those of two passes; what differs is that the running statistics take three
momentum updates per step (x, x', x) instead of two, which changes the eval-mode model that is
validated and evaluated. ``forwards=3`` (default) does what the reference does; ``forwards=2`` is the
cheaper reading (one clean forward/backward less), ``f(x)`` serving both CE and KL target. The third
pass is made only when TRADES computed the clean logits itself: when another component supplied them
(NAT's ``joint_forward``: one pass on ``cat([x, x'])``) there is no reference to follow and no third
pass. Deviation: trades_AWP/train_trades_cifar.py (TRADES-AWP) orders its passes x', x (KL target), x
(CE); ``trades+awp`` keeps TRADES' order x, x', x (same values, the running statistics weight the
clean batch by 0.181 and the adversarial by 0.09 instead of 0.19 and 0.081 for one step).

**L2** (``threat_model.norm: l2``): the authors' ``distance='l_2'`` branch of ``trades_loss``
(:func:`natbench.defenses._common.trades_l2_ascent`): SGD on delta with lr ``2 * eps / K``, the per-sample
L2-normalised gradient of the KL (zero-norm gradients replaced by random ones), projection onto [0, 1]
and ``renorm`` to the eps-ball. Its step is the authors' ``2 * eps / K``, not the task's
``train_step_size`` (an explicit ``trades.step_size`` wins). L1: refused at resolve time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..contracts import Batch, LossOut, cached_logits
from ..errors import ConfigError
from ._common import CleanCEPlusAdvTerm, attack_budget, bn_mode, gaussian_start_ascent, kl_per_sample, trades_l2_ascent


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``sum_i KL(p(x_i) || p(x'_i))`` (sum reduction): KLDivLoss(log_softmax(adv), softmax(clean))."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="sum")


class TRADES(CleanCEPlusAdvTerm):
    name = "trades"
    norms = ("linf", "l2")  # the training attack's norms: trades.py's distance 'l_inf' and 'l_2'

    @dataclass(frozen=True)
    class Params:
        beta: float = 6.0  # robust-term weight (train_trades_cifar10.py; the function's own default is 1.0)
        steps: int | None = None  # inner KL steps; None: the task's threat_model.train_steps
        step_size: float | None = None  # None: the task's threat_model.train_step_size
        init_std: float = 0.001  # std of the Gaussian start around x
        attack_bn: Literal["train", "eval"] = "eval"  # TRADES attacks with running BN statistics
        forwards: int = 3  # train-mode forwards of the outer loss: 3 = trades.py (x, x', x: three BN running-stat updates), 2 = x, x'

        def validate(self, where: str) -> None:
            if self.forwards not in (2, 3):
                raise ConfigError(f"{where}.forwards: must be 3 (the reference's x, x', x) or 2 (x, x'), got {self.forwards}")

    def __init__(self, params: "TRADES.Params | None" = None):
        self.params = params or self.Params()
        self.params.validate("trades")

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        p, tm = self.params, task.threat
        with bn_mode(model, p.attack_bn):
            with torch.no_grad():
                z_clean = task.logits(model, batch, batch.x)

            def kl_sum(x_adv: torch.Tensor) -> torch.Tensor:
                z_ref = task.logits(model, batch, batch.x).detach() if p.attack_bn == "train" else z_clean
                return trades_kl(z_ref, task.logits(model, batch, x_adv))

            steps, step_size = attack_budget(p, tm)
            if tm.norm == "l2":  # the authors' L2 branch; its step 2 * eps / K unless trades.step_size is set
                step_size = 2 * tm.eps / steps if p.step_size is None else p.step_size
                cache["x_adv"] = trades_l2_ascent(kl_sum, batch.x, eps=tm.eps, steps=steps, step_size=step_size,
                                                  init_std=p.init_std, generator=generator)
                return
            cache["x_adv"] = gaussian_start_ascent(kl_sum, batch.x, eps=tm.eps, steps=steps, step_size=step_size,
                                                   init_std=p.init_std, generator=generator)

    def adaptive_loss(self, inp) -> torch.Tensor:
        """Its training loss per sample with the attacked input as x':
        ``CE(f(x), y) + beta * KL(p(x) || p(x'))`` (the CE on the clean input is a constant)."""
        z = inp.logits_clean()
        return F.cross_entropy(z, inp.batch.y, reduction="none") + self.params.beta * kl_per_sample(z, inp.logits_adv)

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        supplied = "logits_clean" in cache  # by another component (NAT's joint forward): no third pass
        z = cached_logits(model, batch, task, cache, "clean", batch.x)
        z_adv = cached_logits(model, batch, task, cache, "adv", cache["x_adv"])
        ce = F.cross_entropy(z, batch.y)
        z_target = z if self.params.forwards == 2 or supplied else task.logits(model, batch, batch.x)
        kl = trades_kl(z_target, z_adv) / len(batch)
        return LossOut(ce + self.params.beta * kl, {"ce_clean": ce.item(), "trades_kl": kl.item()})
