"""Fast adversarial training, FGSM with a random start ("FGSM-RS"): Wong, Rice & Kolter, "Fast is better
than free: Revisiting adversarial training", ICLR 2020, Algorithm 3, as ``locuslab/fast_adversarial @
54f7287 : CIFAR10/train_fgsm.py`` (default ``--delta-init random``; notes/algorithms.md Sec. 6.1).

Per mini-batch, in [0, 1] pixel units (the reference divides eps and alpha by the CIFAR std because its
loader normalises; natbench normalises inside the model, so the same numbers are plain pixel units)::

    delta ~ U(-eps, eps)  (drawn from the step's generator),   delta <- clip_[-x, 1-x](delta)
    delta <- clip_[-eps, eps](delta + alpha * sign(grad_delta CE(f(x + delta), y)))
    delta <- clip_[-x, 1-x](delta)
    loss   = CE(f(x + delta), y)                      (batch mean, adversarial inputs only)

with ``alpha = 1.25 * eps`` by default (the reference's 10/255 at eps = 8/255). The gradient is that of
the *batch-mean* CE, as the reference computes it. **BatchNorm:** the reference calls ``model.train()``
once and never switches, so the FGSM step runs in train mode (batch statistics, running statistics
updated); ``attack_bn="train"`` is the default.

**Early-stop guard** (the reference's ``--early-stop``; :meth:`FastAT.epoch_end`). After each epoch it
runs PGD on the epoch's first training batch: ``guard_steps`` (5) signed steps of ``guard_step_size``
(default ``eps / 4``, the reference's 2/255 at eps = 8/255), a U(-eps, eps) start clipped to the image
range, and -- as the reference's ``utils.attack_pgd`` -- each step only moves the examples that are still
classified correctly (all stop once none is), then it measures the accuracy on the result. If that
accuracy is more than ``guard_drop`` (0.2) below the last accepted epoch's (initially 0), it returns
``stop = 1``: the runner then ends training and keeps the previous epoch's weights (the reference's
``best_state_dict``); otherwise the accuracy becomes the new reference value (kept in
:meth:`state_dict` so a resumed run continues the comparison).

*BN mode of the guard.* The reference runs the guard with the model still in **train** mode (it never
calls ``model.eval()`` during training; only the final evaluation uses a fresh ``model_test.eval()``),
so the guard's forward passes use batch statistics and also move the running statistics (the 5 attack
forwards, attack_pgd's restart-selection forward and the accuracy forward: 7 in all). ``guard_bn="train"``
(default) reproduces that, side effects included, so the saved weights/statistics match the reference's
procedure; ``guard_bn="eval"`` measures with running statistics and leaves the model untouched.

Not reproduced: apex AMP O2 (fp16, loss scale 1.0). natbench trains in fp32 unless the profile opts
into bf16 autocast (``amp``; then around ``step_loss``, so the FGSM step too; the guard runs outside it).
The cyclic schedule is the profile's business: the ``fast`` profile of cifar10 has the reference's lr
0 -> 0.2 -> 0 over 15 epochs, stepped per iteration (``lr_points``), and the SGD momentum 0.9 -> 0.8 ->
0.9 that PyTorch's ``CyclicLR`` cycles with it by default (``cycle_momentum: [0.8, 0.9]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..contracts import Batch, LossOut
from ..errors import ConfigError
from ._common import AdvCE, bn_mode, ce_loss


def _uniform(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """``U(-eps, eps)`` of ``x``'s shape, drawn with ``generator`` on its own device, moved to ``x``'s."""
    device = x.device if generator is None else generator.device
    noise = torch.empty(x.shape, device=device, dtype=x.dtype).uniform_(-eps, eps, generator=generator)
    return noise.to(x.device)


def _clip_to_image(delta: Tensor, x: Tensor) -> Tensor:
    """``clip_[-x, 1-x](delta)`` so that ``x + delta`` lies in [0, 1] (the reference's ``clamp(delta, lower - X, upper - X)``)."""
    return torch.max(torch.min(delta, 1 - x), -x)


class FastAT(AdvCE):
    name = "fast-at"

    @dataclass(frozen=True)
    class Params:
        alpha: float | None = None  # FGSM step; None: 1.25 * eps (reference: 10/255 at eps 8/255)
        attack_bn: Literal["train", "eval"] = "train"  # BN mode of the FGSM step (reference: train)
        early_stop: bool = True  # the reference's --early-stop guard against catastrophic overfitting
        guard_steps: int = 5  # PGD steps of the guard (reference: 5)
        guard_step_size: float | None = None  # None: eps / 4 (reference: 2/255 at eps 8/255)
        guard_drop: float = 0.2  # stop when guard accuracy < previous accepted accuracy - guard_drop
        guard_bn: Literal["train", "eval"] = "train"  # BN mode of the guard (reference: train, running stats move)

    def __init__(self, params: "FastAT.Params | None" = None):
        self.params = params or self.Params()
        p = self.params
        if (p.alpha is not None and not p.alpha >= 0) or p.guard_steps < 0 or not p.guard_drop >= 0 \
                or (p.guard_step_size is not None and not p.guard_step_size >= 0):
            raise ConfigError(f"fast-at needs alpha >= 0, guard_steps >= 0, guard_step_size >= 0 and guard_drop >= 0; got {p}.")
        self.prev_robust = 0.0  # accuracy of the last accepted epoch's guard (reference: prev_robust_acc = 0.)

    # ---------------------------------------------------------------------------------- training
    def alpha(self, eps: float) -> float:
        return 1.25 * eps if self.params.alpha is None else float(self.params.alpha)

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        eps = float(task.threat.eps)
        x = batch.x.detach()
        delta = _clip_to_image(_uniform(x, eps, generator), x)
        with bn_mode(model, self.params.attack_bn):
            objective = task.objective(model, batch, "ce")
            with torch.enable_grad():
                x_in = (x + delta).requires_grad_(True)
                (grad,) = torch.autograd.grad(objective(x_in).mean(), x_in)  # = grad wrt delta
        delta = (delta + self.alpha(eps) * grad.sign()).clamp(-eps, eps)
        delta = _clip_to_image(delta, x)
        cache["x_adv"] = (x + delta).clamp(0.0, 1.0).detach()  # the clamp only absorbs rounding

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        return ce_loss(model, batch, task, cache, "adv", cache["x_adv"])

    # ---------------------------------------------------------------------------------- guard
    def guard_accuracy(self, model, task, batch: Batch, generator: torch.Generator | None) -> float:
        """Accuracy on ``batch`` under the guard's PGD (``utils.attack_pgd`` with 1 restart), in ``guard_bn`` mode."""
        p = self.params
        eps = float(task.threat.eps)
        step = eps / 4 if p.guard_step_size is None else float(p.guard_step_size)
        x, y = batch.x.detach(), batch.y
        with bn_mode(model, p.guard_bn):
            delta = _clip_to_image(_uniform(x, eps, generator), x)
            for _ in range(p.guard_steps):
                with torch.enable_grad():
                    x_in = (x + delta).requires_grad_(True)
                    z = task.logits(model, batch, x_in)
                    active = z.argmax(1) == y  # only examples still classified correctly move
                    if not bool(active.any()):
                        break
                    (grad,) = torch.autograd.grad(F.cross_entropy(z, y), x_in)
                moved = _clip_to_image((delta + step * grad.sign()).clamp(-eps, eps), x)
                delta = torch.where(active.view(-1, *([1] * (x.dim() - 1))), moved, delta)
            with torch.no_grad():
                if p.guard_bn == "train":
                    task.logits(model, batch, x + delta)  # attack_pgd's restart-selection forward (moves BN stats)
                z = task.logits(model, batch, (x + delta).clamp(0.0, 1.0))
                return (z.argmax(1) == y).sum().item() / y.shape[0]

    def epoch_end(self, model, task, batch: Batch, generator: torch.Generator | None) -> dict[str, float]:
        """The early-stop guard: ``{"guard_robust": acc, "stop": 1.0 | 0.0}`` (``{}`` when ``early_stop`` is off)."""
        if not self.params.early_stop:
            return {}
        acc = self.guard_accuracy(model, task, batch, generator)
        stop = acc - self.prev_robust < -self.params.guard_drop  # reference: robust_acc - prev_robust_acc < -0.2
        if not stop:
            self.prev_robust = acc
        return {"guard_robust": acc, "stop": 1.0 if stop else 0.0}

    def state_dict(self) -> dict:
        return {"prev_robust": self.prev_robust}

    def load_state_dict(self, d: dict) -> None:
        self.prev_robust = float(d.get("prev_robust", 0.0))
