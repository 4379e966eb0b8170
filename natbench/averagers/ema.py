"""EMA: exponential moving average of the whole model state, the "WA" of NuAT-WA and NuAT2-WA
(Sriramanan, Addepalli, Baburaj, Babu, "Towards Efficient and Effective Adversarial Training",
NeurIPS 2021, Sec. 5.4), as val-iisc/NuAT @ 8962290 ``CIFAR10/NuAT_WA_cifar10.py`` (lines 139-141,
237-238) and ``CIFAR10/NuAT2-WA_WRN_cifar10.py`` (lines 154-158, 257-259); notes/algorithms.md Sec. 5.

After every optimizer step, for **every** entry of ``model.state_dict()`` (parameters *and* buffers:
BatchNorm running mean/var and the integer ``num_batches_tracked``)::

    ema[k] <- (1 - decay) * w[k] + decay * ema[k]

Decays: 0.9998 (the evaluated WA model of NuAT-WA and NuAT2-WA; this class's default) and 0.99
(the *attack* model of NuAT2-WA's first attack step, kept by ``nuat2`` itself with
``attack_ema=0.99``, not by this class).

Details that follow the reference exactly:

- **Start.** The reference stores ``model.state_dict()`` once before training; those tensors alias
  the live parameters and buffers (updated in place by the optimizer and by BatchNorm), so its first
  update computes ``(1 - decay) * w_1 + decay * w_1`` with ``w_1`` the weights *after* the first
  optimizer step, not the initial ``w_0``. natbench starts the average from a copy of the model's
  state at the first ``update`` and applies the same formula (the same floating-point numbers).
- **Integer buffers** are averaged too, with the same expression; PyTorch's type promotion makes the
  average of ``num_batches_tracked`` a floating tensor (the default dtype), kept as such in the
  averager's state (and in ``state_dict()``). When the average is put into a module (``averaged``)
  it is copied into the module's own buffer, which casts it back by truncation, exactly as the
  reference's ``model.load_state_dict(exp_avg)``. (It is only read by BatchNorm layers with
  ``momentum=None``.)

``averaged(model)`` returns a module owned by the averager: a deep copy of ``model`` (made once, per
source model) into which the current average is copied at every call; it is overwritten by the next
call, so a caller keeps its ``state_dict()`` rather than the module. Its train/eval mode is set to
``model``'s, so it is a drop-in replacement for ``model``; evaluation code sets ``eval()`` itself
(``ClassificationTask.evaluate`` does), as the reference evaluates its WA model in eval mode. Before
the first ``update`` the average *is* the model (as the reference's aliased dict), so ``averaged``
returns a copy with the model's current state. The copy holds no ``.grad``.

``state_dict()``/``load_state_dict()`` carry the average and the number of updates, so a resumed
run continues the same average.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def ema_step(ema: dict[str, Tensor] | None, model: nn.Module, decay: float) -> dict[str, Tensor]:
    """One update ``(1 - decay) * w + decay * ema`` of every ``model.state_dict()`` entry; returns the
    new average (fresh tensors). ``ema=None`` (no update yet) starts from a copy of the current state,
    as the reference's aliased start does."""
    with torch.no_grad():
        state = model.state_dict()
        if ema is None:
            ema = {k: v.detach().clone() for k, v in state.items()}
        return {k: (1 - decay) * v + decay * ema[k] for k, v in state.items()}


def load_average(module: nn.Module, ema: dict[str, Tensor]) -> None:
    """Copy an average into ``module``'s parameters and buffers in place (dtype cast by ``copy_``,
    i.e. what ``module.load_state_dict(ema)`` does)."""
    with torch.no_grad():
        for k, t in module.state_dict().items():
            t.copy_(ema[k])


class ModuleCopy:
    """A deep copy of a source module, made once and remade when the source module, its device or
    its dtype changes (no ``.grad``; parameters keep the source's ``requires_grad`` unless frozen)."""

    def __init__(self, freeze: bool = False):
        self.freeze = freeze
        self._copy: nn.Module | None = None
        self._source: weakref.ref | None = None

    def get(self, model: nn.Module) -> nn.Module:
        ref = next(iter(model.parameters()), None)
        mine = None if self._copy is None else next(iter(self._copy.parameters()), None)
        stale = (self._copy is None or self._source is None or self._source() is not model
                 or (ref is not None and (mine is None or mine.device != ref.device or mine.dtype != ref.dtype)))
        if stale:
            twin = copy.deepcopy(model)
            for q in twin.parameters():
                q.grad = None
                if self.freeze:
                    q.requires_grad_(False)
            self._copy, self._source = twin, weakref.ref(model)
        return self._copy


class EMA:
    name = "ema"

    @dataclass(frozen=True)
    class Params:
        decay: float = 0.9998  # tau of ema <- (1-tau) w + tau ema, every optimizer step (NuAT-WA, NuAT2-WA: 0.9998)

    def __init__(self, params: "EMA.Params | None" = None):
        self.params = params or self.Params()
        if not (0.0 <= self.params.decay <= 1.0):
            raise ConfigError(f"ema needs 0 <= decay <= 1; got {self.params.decay}.")
        self._ema: dict[str, Tensor] | None = None
        self.updates = 0
        self._copy = ModuleCopy()

    def update(self, model: nn.Module) -> None:
        """After every optimizer step (and a weight perturbation's restore)."""
        self._ema = ema_step(self._ema, model, self.params.decay)
        self.updates += 1

    def averaged(self, model: nn.Module) -> nn.Module:
        """The EMA model (owned by the averager, refreshed at every call), in ``model``'s train/eval mode."""
        twin = self._copy.get(model)
        load_average(twin, self._ema if self._ema is not None else model.state_dict())
        twin.train(model.training)
        return twin

    def state_dict(self) -> dict:
        return {"ema": dict(self._ema or {}), "updates": self.updates}

    def load_state_dict(self, d: dict) -> None:
        ema = d.get("ema") or {}
        self._ema = {k: v.clone() for k, v in ema.items()} or None
        self.updates = int(d.get("updates", 0))
