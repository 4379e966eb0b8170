"""Clean logits computed once and handed on: a logits objective that carries them for one input.

AutoAttack knows the clean logits of every point it passes to a component (it computed them to find
the clean-correct points); APGD-CE, APGD-T, FAB-T, Square and MALT each start by computing them again
on the same rows (the original does the same, in every component's ``perturb``). An objective built
by :func:`carrying` holds ``(x, logits)``; :func:`clean_logits` returns those logits when it is asked
for exactly that input (``torch.equal``: same shape, same values) and runs the no-grad forward
otherwise. The model is evaluated (a row's logits do not depend on the other rows), so the carried
logits are the ones the forward would give: the same clean predictions, targets and flags.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from natbench.contracts import LogitsObjective

#: attribute of a logits objective holding ``(x, clean logits of x)``
KNOWN = "known_clean"


def carrying(objective: Any, x: Tensor, logits: Tensor) -> Any:
    """A new logits objective calling ``objective`` (same labels and class count), carrying ``logits``,
    the clean logits of ``x`` (``objective`` itself is not changed)."""
    out = LogitsObjective(objective, objective.y, getattr(objective, "num_classes", logits.shape[1]))
    setattr(out, KNOWN, (x.detach(), logits.detach()))
    return out


def clean_logits(objective: Any, x: Tensor) -> Tensor:
    """The logits of ``x`` under ``objective``, no gradient: the carried ones when ``objective``
    carries the logits of exactly ``x``, else one forward."""
    known = getattr(objective, KNOWN, None)
    if known is not None:
        x_ref, logits = known
        if x_ref is x or (x_ref.shape == x.shape and x_ref.dtype == x.dtype and x_ref.device == x.device
                          and torch.equal(x_ref, x.detach())):
            return logits
    with torch.no_grad():
        return objective(x)
