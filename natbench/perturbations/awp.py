"""AWP: Adversarial Weight Perturbation (Wu, Xia, Wang, "Adversarial Weight Perturbation Helps Robust
Generalization", NeurIPS 2020), the one-step (K2 = 1) weight perturbation with the layer-wise
relative constraint ``||v_l|| <= gamma * ||w_l||`` of its Algorithm 1, exactly as
csdongxian/AWP @ a7acf5d ``AT_AWP/utils_awp.py`` and ``trades_AWP/utils_awp.py`` (identical
procedure; notes/algorithms.md Sec. 3.1).

Per training step, after the base defense has built its adversarial examples on the *unperturbed*
model (``Composite.step_loss``):

1. ``proxy.load_state_dict(model.state_dict())``; ``proxy.train()``. The proxy is a separate copy
   (made lazily, once), so the model's BatchNorm running statistics are untouched; the proxy's own
   statistics are overwritten at the next call.
2. One SGD step (no momentum, no weight decay, lr ``proxy_lr``) on the proxy on ``-loss_fn(proxy)``:
   gradient **ascent** on the composite training loss (e.g. ``-CE(f(x'), y)`` for pgd-at,
   ``-[CE(f(x), y) + beta * KL]`` for trades), on the same cached adversarial examples. The
   gradient is taken with ``torch.autograd.grad`` on the proxy's parameters, so no ``.grad`` of the
   model (or of anything else) is written.
3. For every state-dict entry whose name contains ``weight`` and that has >= 2 dimensions (conv and
   linear kernels; biases, BN affine parameters and all buffers are skipped)::

       d_l = w_l^proxy - w_l,   v_l = ||w_l||_F / (||d_l||_F + 1e-20) * d_l

   so ``||v_l|| = ||w_l||``. The proxy's lr therefore cancels (up to the 1e-20): the reference uses
   0.01 (AT-AWP) and ``args.lr`` = 0.1 (TRADES-AWP).
4. ``w_l <- w_l + gamma * v_l`` in place; the outer loss, its backward and ``optimizer.step()`` then
   happen at the perturbed weights.
5. ``restore()`` (called by the runner after the optimizer step) removes the same ``gamma * v_l``
   and keeps the update made at the perturbed point (SAM-like). natbench computes it as
   ``w_l <- w_0 + (w_l - w_1)`` with ``w_0``/``w_1`` the weights before/after step 4: the same
   number as the reference's ``w_l - gamma * v_l`` up to one rounding, and bit-exact ``w_0`` when
   no optimizer step happened in between.

**Warmup.** The runner calls ``set_epoch(epoch, epochs)`` with 0-indexed epochs; AWP is active when
``epoch >= warmup`` (before the first ``set_epoch`` the epoch is 0). Both reference scripts perturb
when ``epoch >= args.awp_warmup``, but they count epochs differently (:func:`reference_warmup`):

- ``AT_AWP/train_cifar10.py`` (and ``train_svhn.py``) loop ``for epoch in range(start_epoch, epochs)``
  from 0: their ``--awp-warmup W`` is natbench's ``warmup = W``. The CIFAR logs ran ``W = 0`` (AWP from
  the first epoch; cifar10 profile ``at-awp``), the SVHN L-inf run ``W = 5`` (``warmup=5``: five epochs
  without AWP).
- ``trades_AWP/train_trades_cifar.py`` loops ``for epoch in range(1, epochs + 1)``: its default
  ``--awp-warmup 10`` perturbs from its 10th epoch, natbench's ``warmup = 9`` (profile ``trades-awp``).

As in the reference, ``gamma = 0`` disables AWP (no proxy step at all).

**gamma.** The default 5e-3 is the TRADES-AWP default; all AT-AWP CIFAR logs ran with 1e-2 (the
``at-awp`` profile sets ``awp.gamma=0.01``). There is no MART-AWP script in the repository.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError

#: Added to ``||d_l||`` before dividing (``EPS`` of the reference's utils_awp.py).
EPS = 1e-20


#: the first epoch number of each reference script's training loop (notes/algorithms.md Sec. 3.2-3.3)
REFERENCE_FIRST_EPOCH = {"at-awp": 0, "trades-awp": 1}


def reference_warmup(script: str, awp_warmup: int) -> int:
    """natbench's ``warmup`` for the reference script's ``--awp-warmup`` (``"at-awp"``: epochs counted
    from 0, the same number; ``"trades-awp"``: counted from 1, one less, at least 0)."""
    if script not in REFERENCE_FIRST_EPOCH:
        raise ConfigError(f"reference_warmup: unknown script {script!r}; one of {', '.join(REFERENCE_FIRST_EPOCH)}")
    return max(int(awp_warmup) - REFERENCE_FIRST_EPOCH[script], 0)


def _noop() -> None:
    return None


class AWP:
    name = "awp"

    @dataclass(frozen=True)
    class Params:
        gamma: float = 5e-3  # relative size, ||gamma*v_l|| = gamma*||w_l|| (TRADES-AWP 5e-3; AT-AWP logs 1e-2); 0: off
        warmup: int = 0  # epochs without AWP (0-indexed: active when epoch >= warmup); AT-AWP's --awp-warmup W is W, TRADES-AWP's W-1
        proxy_lr: float = 0.01  # lr of the proxy's one SGD ascent step; cancels in the normalisation (AT-AWP 0.01)

    def __init__(self, params: "AWP.Params | None" = None):
        self.params = params or self.Params()
        p = self.params
        if not (p.gamma >= 0) or p.warmup < 0 or not (p.proxy_lr > 0):
            raise ConfigError(f"awp needs gamma >= 0, warmup >= 0 and proxy_lr > 0; got {p}.")
        self.epoch = 0
        self._proxy: nn.Module | None = None
        self._source: weakref.ref | None = None

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the runner before each (0-indexed) epoch."""
        self.epoch = int(epoch)

    @property
    def active(self) -> bool:
        return self.params.gamma > 0 and self.epoch >= self.params.warmup

    def _proxy_for(self, model: nn.Module) -> nn.Module:
        ref = next(iter(model.parameters()), None)
        mine = None if self._proxy is None else next(iter(self._proxy.parameters()), None)
        stale = (self._proxy is None or self._source is None or self._source() is not model
                 or (ref is not None and (mine is None or mine.device != ref.device or mine.dtype != ref.dtype)))
        if stale:
            proxy = copy.deepcopy(model)
            for q in proxy.parameters():
                q.grad = None
            self._proxy, self._source = proxy, weakref.ref(model)
        return self._proxy

    def perturbation(self, model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> dict[str, Tensor]:
        """``{state-dict name: v_l}`` from one proxy ascent step (steps 1-3); the model is not changed."""
        proxy = self._proxy_for(model)
        proxy.load_state_dict(model.state_dict())
        proxy.train()
        params = [q for q in proxy.parameters() if q.requires_grad]
        with torch.enable_grad():
            loss = -loss_fn(proxy)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        sync = getattr(self, "grad_sync", None)  # data-parallel training: the average over ranks
        if sync is not None:
            grads = sync([g if g is not None else torch.zeros_like(q) for q, g in zip(params, grads)])
        with torch.no_grad():
            for q, g in zip(params, grads):
                if g is not None:
                    q.add_(g, alpha=-self.params.proxy_lr)  # plain SGD step on -loss
            new = proxy.state_dict()
            out = {}
            for name, w in model.state_dict().items():
                if "weight" in name and w.dim() >= 2:
                    d = new[name] - w
                    out[name] = w.norm() / (d.norm() + EPS) * d
        return out

    def apply(self, model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> Callable[[], None]:
        """Perturb ``model``'s conv/linear weights by ``gamma * v`` in place; return ``restore``."""
        if not self.active:
            return _noop
        v = self.perturbation(model, loss_fn)
        saved: list[tuple[Tensor, Tensor, Tensor]] = []
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in v:
                    w0 = param.detach().clone()
                    param.add_(self.params.gamma * v[name])
                    saved.append((param, w0, param.detach().clone()))

        def restore() -> None:
            with torch.no_grad():
                for param, w0, w1 in saved:
                    param.sub_(w1).add_(w0)  # w0 + (update made at the perturbed point)
            saved.clear()  # a second call is a no-op

        return restore
