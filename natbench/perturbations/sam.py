"""SAM: Sharpness-Aware Minimization (Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization
for Efficiently Improving Generalization", ICLR 2021, Sec. 2: the first-order ``eps_hat(w)`` for p = 2, and
Algorithm 1), as a weight perturbation, following ``davda54/sam @ 3c3afdb : sam.py``
(``first_step``/``second_step``). NAT uses a SAM-trained
model as one of its adversary-model states (Appendix G, Table 8): ``vanilla+sam``.

Per training step, after the base defense has prepared its inputs on the unperturbed model:

1. ``g = grad_w loss_fn(model)`` at the current weights ``w`` (train mode, the composite training loss
   on the cached inputs), taken with ``torch.autograd.grad``: no ``.grad`` is written. Parameters the
   loss does not reach get no perturbation (davda54 skips ``p.grad is None``).
2. ``e = rho * g / (||g||_2 + 1e-12)`` with the *global* L2 norm over all parameters (the paper's
   ``eps_hat`` for p = 2); with ``adaptive=True`` (ASAM, Kwon et al., ICML 2021, as davda54 implements
   it) ``e_p = rho * w_p^2 * g_p / (||(|w| * g)||_2 + 1e-12)``.
3. ``w <- w + e`` in place; the composite loss, its backward and ``optimizer.step()`` then happen at
   ``w + e`` (the SAM gradient ``grad L(w + e)``).
4. ``restore()`` (called by the runner after the optimizer step) sets ``w <- w0 + (w - w1)`` with
   ``w0``/``w1`` the weights before/after step 3, i.e. it removes ``e`` and keeps the optimizer's update;
   bit-exact ``w0`` when no step happened in between (as AWP's restore).

**Deviation from davda54/sam (weight decay, momentum).** davda54 puts ``w`` back *before* the base
optimizer's step (``second_step``: ``p.data = old_p; base_optimizer.step()``), so SGD's coupled weight
decay sees ``w``. Here the optimizer steps at ``w + e`` and the perturbation is removed afterwards, so
the decay term is ``wd * (w + e)`` instead of ``wd * w``: the update differs by ``lr * wd * e`` (with
``||e|| = rho``: ~2.5e-6 in norm per step at lr 0.1, wd 5e-4, rho 0.05), and the same difference enters
SGD's momentum buffer. The gradient part is identical.

**BatchNorm.** davda54's README ("Training tips") recommends that only the *first* forward pass update
the BN running statistics (``enable_running_stats`` before the pass at ``w``, ``disable_running_stats``
-- BN momentum 0 -- before the pass at ``w + e``; ``example/utility/bypass_bn.py``). With
``freeze_bn=True`` (default) natbench does that: step 1's pass at ``w`` updates them; their values
right after it are saved and written back by ``restore()``, so the outer pass at ``w + e`` leaves no
trace. (Saving the buffers, rather than davda54's momentum-0 trick, also keeps ``num_batches_tracked``
-- which momentum 0 still increments -- exact for BN layers with ``momentum=None``.) With
``freeze_bn=False`` both passes update them (davda54's plain usage). Note that the base defense's own
training-time attack may already run the model in train mode before step 1 (e.g. fast-at, pgd-at).

``rho = 0`` disables SAM (no extra pass at all).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError

#: Added to the gradient norm before dividing (davda54's ``grad_norm + 1e-12``).
EPS = 1e-12
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _noop() -> None:
    return None


def _bn_buffers(model: nn.Module) -> list[Tensor]:
    return [b for m in model.modules() if isinstance(m, _BatchNorm)
            for b in (getattr(m, n, None) for n in _BN_BUFFERS) if b is not None]


class SAM:
    name = "sam"

    @dataclass(frozen=True)
    class Params:
        rho: float = 0.05  # neighbourhood radius, ||e||_2 = rho (SAM paper / davda54 default 0.05; ASAM: ~2.0); 0: off
        adaptive: bool = False  # ASAM: e = rho * w^2 g / ||(|w| g)|| (davda54's adaptive=True)
        freeze_bn: bool = True  # BN running stats updated by the pass at w only (davda54 README tip)

    def __init__(self, params: "SAM.Params | None" = None):
        self.params = params or self.Params()
        if not self.params.rho >= 0:
            raise ConfigError(f"sam needs rho >= 0; got {self.params}.")

    def perturbation(self, model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> list[tuple[nn.Parameter, Tensor]]:
        """``[(param, e_p)]`` from the gradient at the current weights (step 1-2); the weights are not changed."""
        params = [q for q in model.parameters() if q.requires_grad]
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(model), params, allow_unused=True)
        sync = getattr(self, "grad_sync", None)  # data-parallel training: the average over ranks
        if sync is not None:
            grads = sync([g if g is not None else torch.zeros_like(q) for q, g in zip(params, grads)])
        pairs = [(q, g) for q, g in zip(params, grads) if g is not None]
        if not pairs:
            return []
        adaptive = self.params.adaptive
        with torch.no_grad():
            device = pairs[0][0].device
            norm = torch.norm(torch.stack([((q.abs() if adaptive else 1.0) * g).norm(p=2).to(device) for q, g in pairs]), p=2)
            scale = self.params.rho / (norm + EPS)
            return [(q, (q.pow(2) if adaptive else 1.0) * g * scale.to(q)) for q, g in pairs]

    def apply(self, model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> Callable[[], None]:
        """Move ``model``'s weights to ``w + e`` in place; return ``restore``."""
        if self.params.rho == 0:
            return _noop
        pert = self.perturbation(model, loss_fn)
        bn = [(b, b.detach().clone()) for b in _bn_buffers(model)] if self.params.freeze_bn else []
        saved: list[tuple[Tensor, Tensor, Tensor]] = []
        with torch.no_grad():
            for q, e in pert:
                w0 = q.detach().clone()
                q.add_(e)
                saved.append((q, w0, q.detach().clone()))

        def restore() -> None:
            with torch.no_grad():
                for q, w0, w1 in saved:
                    q.sub_(w1).add_(w0)  # w0 + (update made at the perturbed point)
                for b, value in bn:
                    b.copy_(value)
            saved.clear()  # a second call is a no-op
            bn.clear()

        return restore
