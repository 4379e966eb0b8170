"""Entropy-minimisation regularizer (EMR): an explicit-regulariser baseline of "Nasty Adversarial
Training: A Probability Sparsity Perspective for Robustness Enhancement" (ICLR 2026), Appendix K,
Eq. 16, Table 11 (row AT+EMR)::

    L = L_AT + lambda_EMR * sum_{i=1}^N p_i log p_i        (Eq. 16, as printed)

with ``p = softmax(f(x))`` and ``lambda_EMR = 0.001`` (Appendix K: "the experimental results are
shown in Table 11 where lambda_EMR = 0.001").

**Sign.** ``sum p log p`` is the *negative* entropy, so Eq. 16 read literally adds ``-lambda * H(p)``
and minimising it would *maximise* the entropy. The surrounding text says the opposite: the term is
introduced as "minimizing the output entropy", is named entropy *minimization* regularization, and
"both EMR and NNR induce the model to output sharp probability distributions and achieve optimal
solutions when the model outputs one-hot probabilities". natbench follows the text: the term is
``+lambda * H(p) = -lambda * sum_i p_i log p_i`` (minimised at one-hot outputs), i.e. Eq. 16 with
the sign the text describes.

**Reduction.** The sum runs over the classes of one sample; the per-sample entropies are averaged
over the batch, as the batch-mean CE of ``L_AT`` is (the paper does not state the reduction).

**Inputs.** Eq. 16 does not say on which inputs ``p`` is taken. natbench applies it to the inputs the
base defense trains on: the adversarial examples ``x'`` when the base provides ``cache["x_adv"]``
(PGD-AT's ``L_AT`` is CE on ``x'`` only), the clean batch otherwise (e.g. ``vanilla+emr``). The
logits the base already computed on those inputs (``cache["logits_adv"]`` / ``cache["logits_clean"]``,
same forward pass) are reused; otherwise they come from ``task.logits(model, batch, x)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..contracts import Batch, LossOut, cached_logits


def train_logits(model, batch: Batch, task, cache: dict) -> tuple[str, torch.Tensor]:
    """``(which, z)``: logits on the inputs the base trains on, ``"adv"`` if ``x_adv`` is cached, else ``"clean"``.

    Reuses ``cache["logits_<which>"]`` when the base (or another regularizer) already computed it and
    stores it otherwise, so regularizers composed together share one forward pass.
    """
    which, x = ("adv", cache["x_adv"]) if "x_adv" in cache else ("clean", batch.x)
    return which, cached_logits(model, batch, task, cache, which, x)


def entropy(z: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy (nats) of ``softmax(z)``: ``-sum_i p_i log p_i``, shape ``(B,)``."""
    return -(F.softmax(z, dim=1) * F.log_softmax(z, dim=1)).sum(dim=1)


class EMR:
    name = "emr"
    requires = frozenset({"logits"})
    needs_cache: frozenset[str] = frozenset()  # uses x_adv when the base provides it
    dependencies = ()

    @dataclass(frozen=True)
    class Params:
        lam: float = 0.001  # lambda_EMR, weight of the batch-mean entropy (paper, Appendix K: 0.001)

    def __init__(self, params: "EMR.Params | None" = None):
        self.params = params or self.Params()

    def adaptive_loss(self, inp) -> torch.Tensor:
        """Its term per sample at the attacked input (the inputs it trains on): ``lam * H(p(x'))``."""
        return self.params.lam * entropy(inp.logits_adv)

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        which, z = train_logits(model, batch, task, cache)
        h = entropy(z).mean()
        return LossOut(self.params.lam * h, {f"emr_entropy_{which}": h.item()})
