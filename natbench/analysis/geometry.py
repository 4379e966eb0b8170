"""Geometry of the linear classification head (NAT paper Sec. 3.2 and 4.4; Eqs. 10-13, Figs. 4, 6, 7).

The head computes logits ``z = W h + b`` from the penultimate features ``h`` (``W``: (C, D), one
weight vector ``w_c`` per class). Everything here works on plain tensors, so the functions can be
checked on a hand-built head; :func:`linear_head` and :func:`penultimate` fetch ``(W, b)`` and ``h``
from a natbench model. See ``docs/analysis.md`` for the equations and the readings taken where the
paper is ambiguous.

- :func:`signed_boundary_distances` — Eq. 10 *without* the absolute value (paper Sec. 4.4, Fig. 6):
  ``D[k, j] = mean over samples i of class k of (w_j . h_i + b_j) / ||w_j||_2`` (``kind="paper"``,
  the distance to the hyperplane ``w_j . h + b_j = 0`` of class ``j``, as Eq. 10 defines the
  "decision boundary of class c"), or the distance to the pairwise decision boundary between classes
  ``k`` and ``j``, ``((w_k - w_j) . h_i + b_k - b_j) / ||w_k - w_j||_2`` (``kind="pairwise"``; positive
  when the sample is on class ``k``'s side; the diagonal is undefined, NaN).
- :func:`weight_distances` — Eq. 11: ``||w_j - w_i||_2`` (biases ignored, as the paper).
- :func:`shortest_boundary_distances` — Eq. 12: with ``gamma = w_j - w_i`` and ``d_i = w_i / ||w_i||``,
  ``D[i, j] = ||gamma - (gamma . d_i) d_i||_2`` (the part of ``gamma`` orthogonal to ``w_i``, which is
  ``||w_j|| sin(angle(w_i, w_j))``). Not symmetric when ``||w_i|| != ||w_j||``; the paper's Fig. 4 is
  a symmetric matrix, so ``symmetric="min"`` (default: the shorter of the two projections),
  ``"mean"`` or ``"none"`` (the raw Eq. 12 matrix, row ``i`` = the projection direction).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

SIGNED_KINDS = ("paper", "pairwise")
SYMMETRIC = ("min", "mean", "none")


# ------------------------------------------------------------------------------------- the head
def linear_head(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of a classification model (:func:`natbench.models.classifier`) or of a
    re-id :class:`~natbench.tasks.reid.ReIDNet` (its identity classifier ``net.classifier``).
    Raises ``TypeError`` when there is none."""
    from ..models import classifier

    try:
        return classifier(model)
    except TypeError:
        net = getattr(model, "net", None)
        layer = getattr(net, "classifier", None)
        if isinstance(layer, nn.Linear):
            return layer
        raise


def head_weights(model: nn.Module) -> tuple[Tensor, Tensor]:
    """``(W (C, D), b (C,))`` of :func:`linear_head` as detached float64 CPU tensors (b = 0 without bias)."""
    layer = linear_head(model)
    w = layer.weight.detach().double().cpu()
    b = layer.bias.detach().double().cpu() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return w, b


def penultimate(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(features h (B, D), logits (B, C))`` of one forward pass: ``h`` is the input of the final
    linear layer (:func:`linear_head`), caught with a forward pre-hook, so it is exactly what the
    head sees whatever the architecture. The caller chooses the mode (eval for analyses) and grad."""
    layer = linear_head(model)
    seen: list[Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"the final linear layer ran {len(seen)} times in one forward pass; expected once")
    return seen[0].flatten(1), logits


# ------------------------------------------------------------------------------------- Eq. 10
def sample_boundary_distances(W: Tensor, b: Tensor, h: Tensor, y: Tensor | None = None,
                              kind: str = "paper") -> Tensor:
    """Per-sample signed distances (N, C) of features ``h`` (N, D).

    ``kind="paper"``: column ``j`` is ``(w_j . h + b_j) / ||w_j||`` (Eq. 10 without |.|).
    ``kind="pairwise"``: column ``j`` is ``((w_y - w_j) . h + b_y - b_j) / ||w_y - w_j||`` with ``y``
    the sample's class (required); NaN where ``j == y`` or ``w_y == w_j``.
    """
    if kind not in SIGNED_KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {SIGNED_KINDS}")
    W, b, h = W.double(), b.double(), h.double()
    logits = h @ W.T + b  # (N, C)
    if kind == "paper":
        return logits / W.norm(dim=1).clamp_min(1e-300)
    if y is None:
        raise ValueError("kind='pairwise' needs the labels y")
    y = y.long()
    margin = logits.gather(1, y[:, None]) - logits  # (w_y - w_j) . h + b_y - b_j
    norm = (W[y][:, None, :] - W[None, :, :]).norm(dim=2)  # ||w_y - w_j|| (N, C)
    out = margin / norm
    out[norm == 0] = float("nan")
    return out


def signed_boundary_distances(W: Tensor, b: Tensor, h: Tensor, y: Tensor, num_classes: int | None = None,
                              kind: str = "paper") -> Tensor:
    """Class x boundary matrix (C, C): row ``k`` is the mean over the samples of true class ``k`` of
    :func:`sample_boundary_distances` (NAT Fig. 6 is row 0 of ``kind="paper"``); a class without
    samples is a row of NaN."""
    c = num_classes or W.shape[0]
    per = sample_boundary_distances(W, b, h, y, kind)
    out = torch.full((c, per.shape[1]), float("nan"), dtype=torch.float64)
    for k in range(c):
        sel = y == k
        if sel.any():
            out[k] = per[sel].mean(0)
    return out


# ------------------------------------------------------------------------------------- Eq. 11
def weight_distances(W: Tensor) -> Tensor:
    """Eq. 11: ``D[i, j] = ||w_j - w_i||_2`` (C, C), symmetric with a zero diagonal."""
    W = W.double()
    return torch.cdist(W, W)


# ------------------------------------------------------------------------------------- Eqs. 12-13
def shortest_boundary_distances(W: Tensor, symmetric: str = "min") -> Tensor:
    """Eq. 12 for every pair (C, C): ``||gamma - (gamma . d_i) d_i||`` with ``gamma = w_j - w_i`` and
    ``d_i = w_i / ||w_i||``; then made symmetric by ``symmetric`` (``min``, ``mean`` or ``none``).
    The diagonal is 0. A zero weight vector has no direction: its rows use ``gamma`` unprojected."""
    if symmetric not in SYMMETRIC:
        raise ValueError(f"symmetric {symmetric!r}: expected one of {SYMMETRIC}")
    W = W.double()
    norms = W.norm(dim=1, keepdim=True)
    d = torch.where(norms > 0, W / norms.clamp_min(1e-300), torch.zeros_like(W))  # (C, D)
    gamma = W[None, :, :] - W[:, None, :]  # gamma[i, j] = w_j - w_i
    proj = (gamma * d[:, None, :]).sum(-1, keepdim=True) * d[:, None, :]  # (gamma . d_i) d_i
    raw = (gamma - proj).norm(dim=-1)
    raw.fill_diagonal_(0.0)
    if symmetric == "min":
        return torch.minimum(raw, raw.T)
    if symmetric == "mean":
        return (raw + raw.T) / 2
    return raw


def eq13_as_printed(W: Tensor) -> Tensor:
    """Eq. 13 exactly as printed, ``||w_i - w_j - ((w_j - w_i) . d_i / ||d_i||^2) d_i||`` (C, C).

    Kept to document the discrepancy: it differs from Eq. 12 by the sign of ``gamma`` in front of the
    projection (for orthogonal weights it is ``sqrt(4 ||w_i||^2 + ||w_j||^2)``, not a projection
    residual). natbench reports Eq. 12 (:func:`shortest_boundary_distances`)."""
    W = W.double()
    norms = W.norm(dim=1, keepdim=True).clamp_min(1e-300)
    d = W / norms
    gamma = W[None, :, :] - W[:, None, :]
    coef = (gamma * d[:, None, :]).sum(-1, keepdim=True) / (d * d).sum(-1)[:, None, None]
    out = (-gamma - coef * d[:, None, :]).norm(dim=-1)
    out.fill_diagonal_(0.0)
    return out


def offdiag_mean(m: Tensor) -> float:
    """Mean of the off-diagonal entries (NaN ignored): one number to compare runs by."""
    m = m.double().clone()
    m.fill_diagonal_(float("nan"))
    vals = m[~torch.isnan(m)]
    return float(vals.mean()) if vals.numel() else float("nan")


def head_summary(W: Tensor, b: Tensor) -> dict[str, Any]:
    """Both symmetric head matrices and their off-diagonal means."""
    wd, sd = weight_distances(W), shortest_boundary_distances(W)
    return {"weight_distances": wd, "shortest_distances": sd,
            "weight_distance_mean": offdiag_mean(wd), "shortest_distance_mean": offdiag_mean(sd),
            "weight_norms": W.double().norm(dim=1)}
