"""Free adversarial training ("Free-m"): Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor &
Goldstein, "Adversarial Training for Free!", NeurIPS 2019, Algorithm 1, as the authors' code
``ashafahi/free_adv_train @ c42cac2`` (TensorFlow, CIFAR: ``free_model.py``, ``free_train.py``) and
``mahyarnajibi/FreeAdversarialTraining @ e185c84 : main_free.py`` (PyTorch, ImageNet); notes/algorithms.md
Sec. 6.2.

One persistent perturbation ``delta`` of batch shape, zero at the start, is carried across the ``m``
replays of a mini-batch *and* across mini-batches (warm start). On every replay::

    x'    = clip_[0,1](x + delta[:B])                    (delta a leaf that requires grad)
    loss  = CE(f(x'), y)                                 (batch mean, train mode)
    one backward -> the weight gradients (for the optimizer step) and delta.grad
    delta <- clip_[-eps, eps](delta + step * sign(delta.grad))     (after_step; step = eps by default)

**Division of labour with the runner.** The runner replays each mini-batch ``replays = m`` times: each
replay is ``step_loss`` (-> :meth:`prepare`, which builds ``x'`` from the current ``delta``, and
:meth:`loss`), ``zero_grad``, ``backward``, ``optimizer.step()``, ``restore`` and the ``after_step`` hooks
(-> :meth:`after_step`, which reads ``delta.grad`` left by that same backward). If regularizers add terms
on ``x'`` (or a weight perturbation moves the weights), their gradient reaches ``delta`` too: ``delta``
ascends the whole composite loss, as the single backward of Free-AT implies.

**Image range.** Both author implementations clip the *input*: ``tf.clip_by_value(x_input + pert, 0,
255)`` in the TF graph, ``in1 = input + noise_batch; in1.clamp_(0, 1.0)`` in PyTorch, and clip ``delta``
only to ``[-eps, eps]``; natbench does the same: the clip is in the graph, so ``delta.grad`` is zero at
pixels strictly outside [0, 1]. At pixels exactly *on* a bound it passes the gradient, as TF's
``clip_by_value`` gradient does (it zeroes only ``x < min`` or ``x > max``); ``torch.clamp``'s gradient
(torch 2.x) is zero there too, which would freeze ``delta`` at 0 wherever images are saturated (the
black background of digits/MNIST: ``x = 0``, ``delta = 0`` -> no gradient, forever). ``locuslab/fast_adversarial : CIFAR10/train_free.py`` instead clips ``delta[:B]``
to ``[-x, 1-x]`` after each update and feeds ``x + delta`` unclamped (which can leave [0, 1] on the first
replay of a new batch); that variant is not reproduced.

**Batch shapes.** A smaller batch (the epoch's last) uses and updates ``delta[:B]``, the rest of ``delta``
is kept (all three references). A batch larger than ``delta`` extends it with zeros; a change of the
per-example shape re-creates it at zero.

**Epochs and replays.** Each mini-batch costs ``m`` optimizer steps, so one natbench epoch of Free-m makes
``m`` times the gradient steps of one PGD-AT epoch (at the cost of ``m`` forward/backward passes, i.e.
the cost of one PGD-(m-1)-AT epoch). To match the gradient steps of an ``E``-epoch natural/AT schedule,
train ``ceil(E / m)`` epochs (the authors: ``epochs = ceil(90 / m)`` on ImageNet; ``train_steps`` 80,000
replays ~ 205 epoch-equivalents ~ 26 passes at m = 8 on CIFAR-10). The learning rate is scheduled per
replay (the runner's contract), so milestones are given in passes over the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..contracts import Batch, LossOut
from ..errors import ConfigError
from ._common import AdvCE, ce_loss


class FreeAT(AdvCE):
    name = "free-at"

    @dataclass(frozen=True)
    class Params:
        m: int = 8  # minibatch replays (authors' CIFAR default 8; ImageNet 4)
        step_size: float | None = None  # delta's signed step; None: eps (the authors' choice)

    def __init__(self, params: "FreeAT.Params | None" = None):
        self.params = params or self.Params()
        p = self.params
        if p.m < 1 or (p.step_size is not None and not p.step_size >= 0):
            raise ConfigError(f"free-at needs m >= 1 and step_size >= 0; got {p}.")
        self.replays = int(p.m)
        self.delta: Tensor | None = None  # the persistent perturbation (no grad), batch-shaped
        self._leaf: Tensor | None = None  # delta[:B] of the current replay, requires grad
        self._eps: float | None = None

    def _delta_for(self, x: Tensor) -> Tensor:
        d = self.delta
        if d is None or d.shape[1:] != x.shape[1:]:
            d = torch.zeros_like(x)
        else:
            d = d.to(device=x.device, dtype=x.dtype)
            if d.shape[0] < x.shape[0]:
                d = torch.cat([d, d.new_zeros((x.shape[0] - d.shape[0], *d.shape[1:]))])
        self.delta = d.detach()
        return self.delta

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        x = batch.x.detach()
        self._eps = float(task.threat.eps)
        leaf = self._delta_for(x)[: x.shape[0]].clone().requires_grad_(True)
        self._leaf = leaf
        z = x + leaf
        # clip_[0,1](z) with TF's clip_by_value gradient: it passes *at* the bounds (torch.clamp's does not)
        cache["x_adv"] = torch.where((z >= 0) & (z <= 1), z, z.detach().clamp(0.0, 1.0))  # not detached: reaches delta

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        return ce_loss(model, batch, task, cache, "adv", cache["x_adv"])

    def after_step(self, model) -> None:
        """``delta[:B] <- clip_[-eps,eps](delta[:B] + step * sign(delta.grad))`` from the replay's backward."""
        leaf, self._leaf = self._leaf, None
        if leaf is None or leaf.grad is None or self.delta is None:
            return
        eps = self._eps
        step = eps if self.params.step_size is None else float(self.params.step_size)
        with torch.no_grad():
            self.delta[: leaf.shape[0]] = (leaf.detach() + step * leaf.grad.sign()).clamp(-eps, eps)

    def state_dict(self) -> dict:
        return {"delta": None if self.delta is None else self.delta.detach().clone()}

    def load_state_dict(self, d: dict) -> None:
        delta = d.get("delta")
        self.delta = None if delta is None else delta.detach().clone()
        self._leaf = None
