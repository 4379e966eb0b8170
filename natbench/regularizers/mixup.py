"""Mixup term: the "AT+mixup" explicit-regulariser baseline of "Nasty Adversarial Training: A Probability
Sparsity Perspective for Robustness Enhancement" (ICLR 2026), Appendix K, Table 11, after mixup (Zhang,
Cisse, Dauphin & Lopez-Paz, ICLR 2018, Sec. 2, with a fixed mixing ratio)::

    x_mix = r * x + (1 - r) * x[perm]
    term  = weight * [ r * CE(f(x_mix), y) + (1 - r) * CE(f(x_mix), y[perm]) ]     (batch means)

added to the base defense's loss, with ``r = 0.7`` and ``weight = 1``. The bracket equals the CE of
``f(x_mix)`` against the soft label ``r * onehot(y) + (1 - r) * onehot(y[perm])``.

**What the paper specifies** (Appendix K, the paragraph after Table 11): "the ratio of mixup is set to
[0.7, 0.3] and randomly sampled in the current batch", and the row is named AT+mixup. So: a *fixed*
ratio 0.7/0.3 (not mixup's Beta(alpha, alpha) draw) and partners drawn at random from the same batch.

**What it does not specify, and natbench's choice:**

- whether mixup is added to AT's loss or replaces it: *added* (the row is "AT+"; like AT+EMR/NNR/LASSO,
  it is an additive term on PGD-AT's ``CE(f(x'), y)``), with ``weight = 1``;
- on which inputs: the inputs the base trains on -- ``cache["x_adv"]`` when the base provides it
  (PGD-AT: the adversarial examples), else the clean batch (e.g. ``vanilla+mixup``). The adversarial
  examples are *not* re-generated for the mixed inputs;
- how the partners are drawn: a uniformly random permutation of the batch (the usual mixup
  implementation), possibly mapping a sample to itself.

**Randomness.** ``Regularizer.loss`` gets no generator, so ``perm = torch.randperm(B)`` is drawn from
torch's *global* CPU RNG, which the runner seeds per epoch (deterministic given the run's seed). It is
drawn once per batch object and reused while the same ``Batch`` comes back, so a weight perturbation's
extra loss evaluation (AWP, SAM) and Free-AT's replays mix the same pairs.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..contracts import Batch, LossOut
from ..errors import ConfigError


class Mixup:
    name = "mixup"
    requires = frozenset({"logits"})
    needs_cache: frozenset[str] = frozenset()  # uses x_adv when the base provides it
    dependencies = ()

    @dataclass(frozen=True)
    class Params:
        weight: float = 1.0  # weight of the whole mixup term (paper: unstated; 1)
        ratio: float = 0.7  # r of the [r, 1-r] mix (paper, Appendix K: [0.7, 0.3])

    def __init__(self, params: "Mixup.Params | None" = None):
        self.params = params or self.Params()
        if not 0.0 <= self.params.ratio <= 1.0 or not self.params.weight >= 0:
            raise ConfigError(f"mixup needs 0 <= ratio <= 1 and weight >= 0; got {self.params}.")
        self._last: tuple[weakref.ref, torch.Tensor] | None = None

    def permutation(self, batch: Batch) -> torch.Tensor:
        """The batch's partner indices: ``torch.randperm(B)`` from the global RNG, once per batch object."""
        n = len(batch)
        if self._last is not None and self._last[0]() is batch and len(self._last[1]) == n:
            return self._last[1]
        perm = torch.randperm(n)
        self._last = (weakref.ref(batch), perm)
        return perm

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        which, x = ("adv", cache["x_adv"]) if "x_adv" in cache else ("clean", batch.x)
        perm = self.permutation(batch).to(x.device)
        r = self.params.ratio
        x_mix = r * x + (1 - r) * x[perm]
        z = task.logits(model, batch, x_mix)
        term = r * F.cross_entropy(z, batch.y) + (1 - r) * F.cross_entropy(z, batch.y[perm])
        return LossOut(self.params.weight * term, {f"mixup_ce_{which}": term.item()})
