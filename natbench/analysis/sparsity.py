"""Output-probability sparsity (NAT paper, Sec. 3 and Fig. 3).

All functions take probabilities ``p`` of shape (B, C) (rows sum to 1) and return per-sample
values of shape (B,); natural logarithms throughout.

- :func:`entropy`: Shannon entropy ``-sum_k p_k log p_k`` (low = sparse).
- :func:`nontarget_entropy`: entropy of the non-target probabilities renormalised to sum to 1,
  ``q_j = p_j / (1 - p_y)`` for ``j != y``, where ``y`` is the *true* label. NAT's claim is that
  the nasty term concentrates the mass left off the true class on few classes (low value).
- :func:`hoyer`: Hoyer (2004) sparsity ``(sqrt(C) - |p|_1/|p|_2) / (sqrt(C) - 1)`` in [0, 1]
  (1 = one-hot, 0 = uniform).
- :func:`sorted_probs` / :func:`profile`: the probabilities of each sample sorted in decreasing order
  (rank 1 = the top class) and their mean over samples: the "distribution of sorted probabilities"
  the NAT paper's Fig. 3 compares (a sparse model puts its mass on the first one or two ranks).
"""
from __future__ import annotations

import math

import torch


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)


def nontarget_entropy(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(p, dtype=torch.bool)
    mask[torch.arange(p.shape[0]), y] = False
    q = p[mask].view(p.shape[0], p.shape[1] - 1)
    q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return entropy(q)


def hoyer(p: torch.Tensor) -> torch.Tensor:
    c = p.shape[1]
    ratio = p.abs().sum(dim=1) / p.norm(dim=1).clamp_min(1e-30)
    return (math.sqrt(c) - ratio) / (math.sqrt(c) - 1)


def summary(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Means over samples of the three measures, from logits."""
    p = torch.softmax(logits.double(), dim=1)
    return {
        "entropy": entropy(p).mean().item(),
        "nontarget_entropy": nontarget_entropy(p, y).mean().item(),
        "hoyer": hoyer(p).mean().item(),
    }


def sorted_probs(p: torch.Tensor) -> torch.Tensor:
    """Each row of ``p`` sorted in decreasing order (B, C): column 0 is the top probability."""
    return p.sort(dim=1, descending=True).values


def profile(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Fig. 3 in numbers, from logits (B, C) and true labels (B,):

    ``sorted_mean`` / ``sorted_median`` (C,): mean and median over samples of :func:`sorted_probs`;
    ``entropy``, ``nontarget_entropy``, ``hoyer``: the per-sample values (B,) (numpy); and their means
    (``*_mean``), plus ``accuracy`` (argmax == y).
    """
    p = torch.softmax(logits.double(), dim=1)
    s = sorted_probs(p)
    out = {
        "sorted_mean": s.mean(0).numpy(),
        "sorted_median": s.median(0).values.numpy(),
        "entropy": entropy(p).numpy(),
        "nontarget_entropy": nontarget_entropy(p, y).numpy(),
        "hoyer": hoyer(p).numpy(),
        "accuracy": float((logits.argmax(1) == y).double().mean()) if len(y) else float("nan"),
    }
    for k in ("entropy", "nontarget_entropy", "hoyer"):
        out[f"{k}_mean"] = float(out[k].mean()) if len(out[k]) else float("nan")
    return out
