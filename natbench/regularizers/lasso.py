"""LASSO (L1) weight regularizer: the model-sparsity baseline of "Nasty Adversarial Training: A
Probability Sparsity Perspective for Robustness Enhancement" (ICLR 2026), Appendix K, Eq. 15,
Table 11 (row AT+LASSO)::

    L = L_AT + lambda_LASSO * sum_{w in theta} |w|        (Eq. 15)

"where lambda_LASSO is set as 0.0001". The sum is the plain (unnormalised) L1 norm over the model.

**Which parameters.** Eq. 15 sums over ``w in theta``, and the paper writes ``theta`` for *all* the
model's parameters (e.g. ``min_{theta_t}`` in Eq. 5); it does not exclude biases or BatchNorm. So
natbench sums ``|w|`` over every tensor of ``model.parameters()``: convolution and linear weights,
biases and BatchNorm affine (gamma, beta) parameters. Buffers are not parameters and are not
included (BatchNorm running statistics, the input ``Normalize`` mean/std). This is on top of, not
instead of, the optimizer's L2 weight decay (the paper's recipe keeps weight decay 5e-4).

The term does not look at the data, so it needs no task capability (``requires`` is empty): it
composes with any base defense on any task kind.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..contracts import Batch, LossOut


def l1_norm(model: torch.nn.Module) -> torch.Tensor:
    """``sum_{w in theta} |w|`` over every parameter tensor of ``model`` (buffers excluded)."""
    params = list(model.parameters())
    if not params:
        return torch.zeros(())
    return torch.stack([p.abs().sum() for p in params]).sum()


class LASSO:
    name = "lasso"
    requires: frozenset[str] = frozenset()  # looks only at the weights, never at model outputs
    needs_cache: frozenset[str] = frozenset()
    dependencies = ()

    @dataclass(frozen=True)
    class Params:
        lam: float = 0.0001  # lambda_LASSO, weight of sum |w| over all parameters (paper, Appendix K: 0.0001)

    def __init__(self, params: "LASSO.Params | None" = None):
        self.params = params or self.Params()

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        l1 = l1_norm(model)
        return LossOut(self.params.lam * l1, {"lasso_l1": l1.item()})
