"""NuAT: single-step Nuclear-Norm Adversarial Training (Sriramanan, Addepalli, Baburaj, Babu, "Towards
Efficient and Effective Adversarial Training", NeurIPS 2021, Eq. 1 (attack) and Algorithm 1 line 8
(training loss)), exactly as val-iisc/NuAT @ 8962290 ``CIFAR10/NuAT_cifar10.py`` (lines 102-119,
197-275) and ``CIFAR10/NuAT_WA_cifar10.py`` (the same step; its lambda ramp is ``hold=0``);
notes/algorithms.md Sec. 5.1-5.2. With ``ema`` (``nuat+ema``) it is NuAT-WA.

Per training step (B = batch size, ``||.||_*`` the nuclear norm of the B x C logit matrix)::

    z_ref = f(x)                                # train mode (batch statistics, updates BN stats)
    x0    = clip_[0,1](x + b * sign(0.5 - U))   # Bernoulli start, U ~ U[0,1): every pixel +-b
    L~    = CE(f(x0), y) + lam * ||z_ref - f(x0)||_* / B    on odd steps of the epoch (counter % 2 == 1)
    L~    = CE(f(x0), y)                                   on even steps (R-FGSM from the same start)
    x'    = clip_[0,1](x + clip_[-eps,eps](clip_[0,1](x0 + alpha * sign(dL~/dx0)) - x))   # eval-mode BN
    L     = CE(f(x), y) + lam * ||f(x) - f(x')||_* / B  # train mode; f(x') computed first, then f(x)

CE is the batch mean. Choices that follow the reference code:

- **Reference logits.** ``z_ref`` is the reference's ``out = model(data)`` (line 208): computed in
  **train** mode before ``model.eval()``, so it uses the batch's statistics and updates the
  BatchNorm running statistics once more per step (before the attack, which uses them), on every
  step (also the even ones, where it is not used). The reference does not detach it; its graph only
  adds parameter gradients that ``optimizer.zero_grad()`` discards, so natbench computes it without
  a graph (same values, same input gradient). The attack's ``f(x0)`` uses eval-mode BN, so even at
  ``x0 = x`` the nuclear term is not zero.
- **Alternation.** ``alt = counter % 2`` with the counter reset to 0 at every epoch (lines 201, 215,
  253): the first step of an epoch is pure CE, the second uses the nuclear term, and so on (not
  mentioned in the README; the paper's Sec. 5.1 "alternate minibatches"). The counter is in
  ``state_dict()``.
- **Step.** One step of ``alpha = eps`` (``Feps/255``, ``step_size=None``) from the start ``b = eps/2``
  (``B_val = 4`` at 8/255, ``init=None``): a pixel ends at ``+-eps`` where the gradient's sign agrees
  with the start's and at ``-+eps/2`` where it does not (and at the [0, 1] bounds where they bind).
- **Training loss.** Clean CE only (Algorithm 1 line 8 and the code; the paper's Eq. 2 writes the CE on
  ``x'``), ``l_ce = 1``; both passes in train mode, adversarial first (lines 224-233), no detach.
- **lambda ramp** (``set_epoch``): the reference starts at 0 and, after each 0-indexed epoch ``e`` with
  ``e < E - 10``, adds ``lam_max / (E - 10)`` (lines 274-275). So epoch ``e`` uses
  ``lam_max * min(e, E-hold) / (E-hold)`` with ``hold = 10``: 0 in epoch 0, 4.5 from epoch 90 of 100.
  The WA scripts (and NuAT2) add ``lam_max / E`` after every epoch: ``hold = 0``, epoch ``e`` uses
  ``lam_max * e / E`` (3.95 in the last epoch of 80 with ``lam_max = 4``). natbench sums the increments
  in the same order (bit-identical). If ``E <= hold`` the reference never increments: lambda stays 0
  (and training is clean CE on one-step examples that do not enter the loss); set ``hold`` lower for
  short runs.
- **Divisor.** The reference divides by the constant ``TRAIN_BATCH_SIZE = 64`` (also for its short
  last batch of 40); natbench divides by the actual batch size unless ``nuc_batch`` is set.

Defaults are NuAT's (ResNet-18, CIFAR-10): ``lam_max = 4.5``, ``hold = 10``. NuAT-WA:
``--defense nuat+ema`` with ``lam_max = 4``, ``hold = 0``.

**Optimiser schedule** (the task profile's business, cifar10 profiles ``nuat``, ``nuat-wa``, ``nuat2``,
``nuat2-wa``): SGD, ``CyclicLR`` from 0 to 0.1 stepped per iteration (``lr_points``) and, as
``CyclicLR``'s default ``cycle_momentum=True`` does in every NuAT script, the momentum moved against
the lr from 0.9 (lr 0) to 0.8 (peak lr) (``cycle_momentum: [0.8, 0.9]``). Where the reference stops
stepping the scheduler (NuAT after epoch 80: lr 0.02, momentum 0.88; NuAT2 after 35: 0.025, 0.875) the
momentum stays there while the lr is divided by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..contracts import Batch, LossOut, cached_logits
from ..errors import ConfigError
from ._common import CleanCEPlusAdvTerm, bn_mode, nuclear_adaptive


# ----------------------------------------------------------------------------------- shared pieces
def nuclear(diff: Tensor, divisor: float) -> Tensor:
    """``||diff||_* / divisor``: the sum of the singular values of the (B, C) matrix ``diff``, taken in at
    least float32 (SVD has no half/bfloat16 kernels; under the runner's CUDA autocast logits are bf16)."""
    if diff.dtype in (torch.float16, torch.bfloat16):
        diff = diff.float()
    return torch.linalg.matrix_norm(diff, ord="nuc") / divisor


def lam_at(epoch: int, epochs: int, lam_max: float, hold: int) -> float:
    """lambda used in 0-indexed ``epoch`` of ``epochs``: 0 at the start, ``+lam_max/(epochs-hold)``
    after every epoch ``e < epochs - hold`` (summed in the reference's order)."""
    lam = 0.0
    span = epochs - hold
    for e in range(epoch):
        if e < span:
            lam += lam_max / span
    return lam


def bernoulli_start(x: Tensor, b: float, generator: torch.Generator) -> Tensor:
    """``clip_[0,1](x + b * sign(0.5 - U))``, ``U ~ U[0, 1)`` drawn from ``generator``."""
    u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    return (x + b * torch.sign(0.5 - u)).clamp(0.0, 1.0).detach()


def signed_step(loss: Callable[[Tensor], Tensor], x_cur: Tensor, x: Tensor, *, step: float, eps: float) -> Tensor:
    """``clip_[0,1](x + clip_[-eps,eps](clip_[0,1](x_cur + step * sign(d loss/d x_cur)) - x))`` (detached)."""
    x_cur = x_cur.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(x_cur), x_cur)
    x_new = (x_cur.detach() + step * grad.sign()).clamp(0.0, 1.0)
    return (x + (x_new - x).clamp(-eps, eps)).clamp(0.0, 1.0).detach()


def nuat_training_loss(model, batch: Batch, task, cache: dict, lam: float, divisor: float) -> LossOut:
    """``CE(f(x), y) + lam * ||f(x) - f(x')||_* / divisor`` in the caller's (train) mode; f(x') first."""
    z_adv = cached_logits(model, batch, task, cache, "adv", cache["x_adv"])  # adversarial pass first, as the reference
    z = cached_logits(model, batch, task, cache, "clean", batch.x)
    ce = F.cross_entropy(z, batch.y)
    nuc = nuclear(z - z_adv, divisor)
    return LossOut(ce + lam * nuc, {"ce_clean": ce.item(), "nuc": nuc.item(), "lam": float(lam)})


def check_common(p, name: str) -> None:
    if not (p.lam_max >= 0) or p.hold < 0 or (p.init is not None and not p.init >= 0) \
            or (p.step_size is not None and not p.step_size >= 0) or (p.nuc_batch is not None and p.nuc_batch <= 0):
        raise ConfigError(f"{name} needs lam_max >= 0, hold >= 0, init/step_size >= 0 (or null) and nuc_batch > 0 "
                          f"(or null); got {p}.")


class NuclearAT(CleanCEPlusAdvTerm):
    """What NuAT and NuAT2 share: the nuclear norm's divisor, the training loss (:func:`nuat_training_loss`
    at the epoch's lambda) and the ``adaptive_loss``; each sets ``params`` and ``lam``."""

    params: Any
    lam: float = 0.0

    def _divisor(self, batch: Batch) -> float:
        return float(self.params.nuc_batch or len(batch))

    def adaptive_loss(self, inp) -> Tensor:
        """Its training loss per sample with the attacked input as x', at the end of the lambda ramp
        (``lam_max``): ``CE(f(x), y) + lam_max * ||f(x) - f(x')||_2`` (see ``nuclear_adaptive``)."""
        return nuclear_adaptive(inp, self.params.lam_max)

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        return nuat_training_loss(model, batch, task, cache, self.lam, self._divisor(batch))


# --------------------------------------------------------------------------------------- NuAT
class NuAT(NuclearAT):
    name = "nuat"

    @dataclass(frozen=True)
    class Params:
        lam_max: float = 4.5  # final nuclear-norm weight (NuAT 4.5; NuAT-WA 4)
        hold: int = 10  # last epochs at lam_max: +lam_max/(E-hold) after each epoch e < E-hold (NuAT 10; WA 0)
        init: float | None = None  # Bernoulli start magnitude b; None: eps/2 (B_val = 4/255 at 8/255)
        step_size: float | None = None  # the one signed step; None: eps (Feps)
        nuc_batch: int | None = None  # divisor of the nuclear norm; None: the batch size (reference: 64 always)

    def __init__(self, params: "NuAT.Params | None" = None):
        self.params = params or self.Params()
        check_common(self.params, "nuat")
        self.epoch, self.epochs = 0, 0
        self.lam = 0.0
        self.counter = 0  # steps taken in the current epoch: odd ones use the nuclear term in the attack

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Before each 0-indexed epoch: lambda of this epoch; the alternation counter restarts at 0
        (unless ``epoch`` is the one a loaded state was counting)."""
        if int(epoch) != self.epoch:
            self.counter = 0
        self.epoch, self.epochs = int(epoch), int(epochs)
        self.lam = lam_at(self.epoch, self.epochs, self.params.lam_max, self.params.hold)

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        p, eps = self.params, task.threat.eps
        alt = self.counter % 2
        self.counter += 1
        with bn_mode(model, "train"), torch.no_grad():
            z_ref = task.logits(model, batch, batch.x)  # the reference's train-mode `out`
        x0 = bernoulli_start(batch.x, eps / 2 if p.init is None else p.init, generator)
        divisor, lam = self._divisor(batch), self.lam

        def objective(xa: Tensor) -> Tensor:
            z = task.logits(model, batch, xa)
            ce = F.cross_entropy(z, batch.y)
            return ce + lam * nuclear(z_ref - z, divisor) if alt else ce

        with bn_mode(model, "eval"):
            cache["x_adv"] = signed_step(objective, x0, batch.x, step=eps if p.step_size is None else p.step_size,
                                         eps=eps)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "epochs": self.epochs, "counter": self.counter}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.epochs = int(d.get("epoch", 0)), int(d.get("epochs", 0))
        self.counter = int(d.get("counter", 0))
        self.lam = lam_at(self.epoch, self.epochs, self.params.lam_max, self.params.hold)
