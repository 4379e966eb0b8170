"""NuAT2 and NuAT2-WA: Nuclear-Norm Adversarial Training with a two-step attack (Sriramanan,
Addepalli, Baburaj, Babu, "Towards Efficient and Effective Adversarial Training", NeurIPS 2021,
Sec. 5.3-5.4: step 1 maximises Eq. 1, step 2 its lambda = 0 case; training loss of Algorithm 1
line 8), exactly as val-iisc/NuAT @ 8962290 ``CIFAR10/NuAT2_WRN_cifar10.py`` (``NucAttack2``, lines
103-127, 205-271) and ``CIFAR10/NuAT2-WA_WRN_cifar10.py`` (``Nuc_SWA_Attack``, lines 95-123, 150-259);
notes/algorithms.md Sec. 5.3.

Attack, BatchNorm in **eval** mode throughout (the reference calls ``model.eval()`` before it), with
``g`` the step-0 model (``f`` itself for NuAT2)::

    z_ref = g(x).detach()                                   # eval mode
    x0 = clip_[0,1](x + b * sign(0.5 - U))                  # Bernoulli start, +-b per pixel
    x1 = P(x0 + eps * sign(d/dx0 [CE(g(x0), y) + lam * ||z_ref - g(x0)||_* / B]))
    x2 = P(x1 + eps * sign(d/dx1  CE(f(x1), y)))            # the current model, CE only

with ``P(v) = clip_[0,1](x + clip_[-eps,eps](clip_[0,1](v) - x))`` after each step and step size
``eps`` (``Feps/255``) for both. Training loss as NuAT (``natbench.defenses.nuat``): train mode,
``f(x')`` then ``f(x)``, ``CE(f(x), y) + lam * ||f(x) - f(x')||_* / B``. lambda ramp: ``+lam_max/E``
after every epoch (``hold = 0``), ``lam_max = 4``.

**NuAT2-WA** (``attack_ema = 0.99``, with ``--defense nuat2+ema``, ``ema.decay = 0.9998`` for the
evaluated model): ``g`` is a 0.99-EMA of the whole state dict (parameters and BN buffers), updated
in ``after_step`` after every optimizer step from epoch 0 on, with the same formula and start as
``natbench.averagers.ema`` (the reference keeps both EMAs in one loop, line 257). In epoch 0 the
reference attacks with ``Nuc_SWA_Attack(model, model, ...)`` (line 228): the current model plays
both roles; from epoch 1 on it loads the EMA into a separate eval-mode model before every attack
(lines 230-232), which is what natbench does (``load_average`` into a frozen copy). The EMA is in
``state_dict()``. The reference also computes the current model's clean logits in
``Nuc_SWA_Attack`` (line 100) and never uses them; natbench skips them.

Divisor of the nuclear norm: the reference uses the actual batch size in NuAT2's attack and the
constant 64 in NuAT2's loss and in NuAT2-WA's attack and loss; natbench uses the actual batch size
everywhere unless ``nuc_batch`` is set (they differ on a short last batch only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..averagers.ema import ModuleCopy, ema_step, load_average
from ..contracts import Batch
from ..errors import ConfigError
from ._common import bn_mode
from .nuat import NuclearAT, bernoulli_start, check_common, lam_at, nuclear, signed_step


class NuAT2(NuclearAT):
    name = "nuat2"

    @dataclass(frozen=True)
    class Params:
        lam_max: float = 4.0  # final nuclear-norm weight (NuAT2, NuAT2-WA: 4)
        hold: int = 0  # last epochs at lam_max: +lam_max/(E-hold) after each epoch e < E-hold (NuAT2: 0)
        init: float | None = None  # Bernoulli start magnitude b; None: eps/2 (B_val = 4/255 at 8/255)
        step_size: float | None = None  # size of each of the two signed steps; None: eps (Feps)
        nuc_batch: int | None = None  # divisor of the nuclear norm; None: the batch size
        attack_ema: float = 0.0  # 0: NuAT2; 0.99: NuAT2-WA, step 0 on this EMA of the model from epoch 1 on

    def __init__(self, params: "NuAT2.Params | None" = None):
        self.params = params or self.Params()
        check_common(self.params, "nuat2")
        if not (0.0 <= self.params.attack_ema < 1.0):
            raise ConfigError(f"nuat2 needs 0 <= attack_ema < 1; got {self.params.attack_ema}.")
        self.epoch, self.epochs = 0, 0
        self.lam = 0.0
        self._ema: dict[str, Tensor] | None = None
        self._attack = ModuleCopy(freeze=True)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = int(epoch), int(epochs)
        self.lam = lam_at(self.epoch, self.epochs, self.params.lam_max, self.params.hold)

    def after_step(self, model) -> None:
        """After every optimizer step: NuAT2-WA's attack EMA (nothing for NuAT2)."""
        if self.params.attack_ema > 0:
            self._ema = ema_step(self._ema, model, self.params.attack_ema)

    def attack_model(self, model):
        """The step-0 model: the EMA copy (eval mode) for NuAT2-WA from epoch 1 on, else ``model``."""
        if self.params.attack_ema <= 0 or self.epoch == 0:
            return model
        twin = self._attack.get(model)
        load_average(twin, self._ema if self._ema is not None else model.state_dict())  # no update yet: the model
        return twin.eval()

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        p, eps = self.params, task.threat.eps
        step = eps if p.step_size is None else p.step_size
        divisor, lam, y = self._divisor(batch), self.lam, batch.y
        with bn_mode(model, "eval"):
            g = self.attack_model(model)
            with torch.no_grad():
                z_ref = task.logits(g, batch, batch.x)
            x0 = bernoulli_start(batch.x, eps / 2 if p.init is None else p.init, generator)

            def step0(xa: Tensor) -> Tensor:
                z = task.logits(g, batch, xa)
                return F.cross_entropy(z, y) + lam * nuclear(z_ref - z, divisor)

            x1 = signed_step(step0, x0, batch.x, step=step, eps=eps)
            cache["x_adv"] = signed_step(lambda xa: F.cross_entropy(task.logits(model, batch, xa), y), x1, batch.x,
                                         step=step, eps=eps)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "epochs": self.epochs, "ema": dict(self._ema or {})}

    def load_state_dict(self, d: dict) -> None:
        self.set_epoch(int(d.get("epoch", 0)), int(d.get("epochs", 0)))
        ema = d.get("ema") or {}
        self._ema = {k: v.clone() for k, v in ema.items()} or None
