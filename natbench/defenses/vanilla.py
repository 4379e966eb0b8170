"""Vanilla (ERM) training: ``L = CE(f(x), y)`` on clean inputs, no adversarial examples; on a task
kind that declares its own training loss for clean inputs (``TRAINING_LOSS_ON``: re-id's identity CE
+ batch-hard triplet, detection's SSD loss) that loss on clean inputs.

Also the default *adversary model* of NAT (NAT paper Sec. 4, "a normally trained adversary model").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..contracts import Batch, LossOut
from ._common import adaptive_ce, outer_loss


class Vanilla:
    name = "vanilla"
    requires = frozenset({"logits"})
    provides = frozenset({"logits_clean"})
    ce_on = frozenset({"clean"})
    select_on = "clean"  # robust validation accuracy is ~0 for every epoch of an undefended model
    norms = ("linf", "l2", "l1")  # no training attack: trains for a threat model of any norm

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: "Vanilla.Params | None" = None):
        self.params = params or self.Params()

    def prepare(self, model, batch: Batch, task, cache: dict, generator: torch.Generator) -> None:
        pass

    def adaptive_loss(self, inp) -> torch.Tensor:
        """Its training loss at the attacked input (which plays the role of the clean x): CE."""
        return adaptive_ce(inp)

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        return outer_loss(model, batch, task, cache, "clean", batch.x)
