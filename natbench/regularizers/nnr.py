"""Negative-norm regularizer (NNR): an explicit-regulariser baseline of "Nasty Adversarial Training:
A Probability Sparsity Perspective for Robustness Enhancement" (ICLR 2026), Appendix K, Eq. 17,
Table 11 (row AT+NNR)::

    L = L_AT - lambda_NNR * sqrt( sum_{i=1}^C p_i^2 )        (Eq. 17)

"regularize negative of the L2 norm of the output values", with ``p = softmax(f(x))`` over the ``C``
classes and ``lambda_NNR = 0.001`` (Appendix K). ``||p||_2`` lies in ``[1/sqrt(C), 1]`` and is largest
at one-hot outputs, so minimising ``-lambda * ||p||_2`` sharpens the prediction.

**Reduction.** ``||p||_2`` is taken per sample and averaged over the batch, as the batch-mean CE of
``L_AT`` is (the paper does not state the reduction).

**Inputs.** As for EMR (see :mod:`natbench.regularizers.emr`): Eq. 17 does not say on which inputs,
so natbench uses those the base trains on, the adversarial examples when the base provides
``cache["x_adv"]``, the clean batch otherwise, reusing the base's logits when cached.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..contracts import Batch, LossOut
from .emr import train_logits


class NNR:
    name = "nnr"
    requires = frozenset({"logits"})
    needs_cache: frozenset[str] = frozenset()  # uses x_adv when the base provides it
    dependencies = ()

    @dataclass(frozen=True)
    class Params:
        lam: float = 0.001  # lambda_NNR, weight of the (negated) batch-mean ||softmax||_2 (paper, Appendix K: 0.001)

    def __init__(self, params: "NNR.Params | None" = None):
        self.params = params or self.Params()

    def adaptive_loss(self, inp):
        """Its term per sample at the attacked input (the inputs it trains on): ``-lam * ||p(x')||_2``."""
        return -self.params.lam * F.softmax(inp.logits_adv, dim=1).norm(p=2, dim=1)

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        which, z = train_logits(model, batch, task, cache)
        norm = F.softmax(z, dim=1).norm(p=2, dim=1).mean()
        return LossOut(-self.params.lam * norm, {f"nnr_norm_{which}": norm.item()})
