"""Re-id losses (identity CE with label smoothing, batch-hard triplet) and the metric attacks' objectives
(``sma``, ``fna``, ``ama``) with their guides (the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...contracts import Batch, Objective
from .model import _features


def smoothed_ce(logits: Tensor, y: Tensor, eps: float) -> Tensor:
    """Per-sample CE against ``(1 - eps) * onehot + eps / K`` (torchreid ``CrossEntropyLoss``, label_smooth)."""
    return F.cross_entropy(logits, y, reduction="none", label_smoothing=float(eps))


def batch_hard_triplet(features: Tensor, y: Tensor, margin: float = 0.3) -> Tensor:
    """Per-anchor batch-hard triplet loss ``max(0, d_ap - d_an + margin)`` (Hermans et al. 2017).

    As torchreid's ``TripletLoss``: Euclidean distances ``sqrt(clamp(|a|^2 + |b|^2 - 2ab, 1e-12))``,
    the hardest positive among the anchor's identity *including itself*, the hardest negative among
    the others; the batch mean is torchreid's value. An anchor without negatives gives 0.
    """
    n = features.size(0)
    sq = features.pow(2).sum(dim=1, keepdim=True).expand(n, n)
    dist = (sq + sq.t()).addmm(features, features.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()
    same = y.view(-1, 1).eq(y.view(1, -1))
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(d_ap - d_an + margin)


# ------------------------------------------------------------------------------------------ guides
@dataclass
class GuideContext:
    """The clean features an objective's guides come from, for the rows of one batch.

    ``side_*``: every item of the attacked side (the batch's rows are ``rows`` among them);
    ``other_*``: the other side (the same tensors, and ``other_rows = rows``, for a training batch,
    where an image must not be its own guide).
    """

    side_feats: Tensor  # (N, D)
    side_pids: Tensor  # (N,)
    rows: Tensor  # (B,) positions of the batch's rows in the side
    other_feats: Tensor  # (M, D)
    other_pids: Tensor  # (M,)
    other_rows: Tensor | None = None  # (B,) positions of the batch's rows in the other side (to exclude self)

    @property
    def clean(self) -> Tensor:
        return self.side_feats[self.rows]

    @property
    def pids(self) -> Tensor:
        return self.side_pids[self.rows]


def batch_context(model: nn.Module, batch: Batch) -> GuideContext:
    """Guides from the batch itself (a training batch): clean features in the model's current mode."""
    with torch.no_grad():
        f = _features(model, batch.x).detach()
    rows = torch.arange(len(batch), device=f.device)
    return GuideContext(f, batch.y, rows, f, batch.y, rows)


def sma_objective(model: nn.Module, ctx: GuideContext) -> Objective:
    f0 = ctx.clean

    def objective(z: Tensor) -> Tensor:
        return (_features(model, z) - f0).pow(2).sum(dim=1)

    return objective


def fna_guides(ctx: GuideContext) -> tuple[Tensor, Tensor, Tensor]:
    """``(push (B, M, D), pull (B, D), active (B,))`` of CEA-LIST/adv-reid ``perturb_queries_hardest_multi``."""
    feats, pids = ctx.side_feats, ctx.side_pids
    ids = torch.unique(pids[pids > 0])
    b, d = len(ctx.rows), feats.shape[1]
    push = ctx.clean.unsqueeze(1).repeat(1, 1, 1)
    pull = torch.zeros(b, d, dtype=feats.dtype, device=feats.device)
    active = torch.zeros(b, dtype=torch.bool, device=feats.device)
    if len(ids) < 2:
        return push, pull, active
    groups = [feats[pids == i] for i in ids]
    m = max(len(g) for g in groups)
    protos = torch.stack([g.mean(dim=0) for g in groups])  # (I, D)
    push = ctx.clean.unsqueeze(1).repeat(1, m, 1)  # padded with the sample's own clean feature
    dist = torch.cdist(ctx.clean, protos)  # (B, I)
    for r, pid in enumerate(ctx.pids.tolist()):
        if pid <= 0:
            continue
        k = int((ids == pid).nonzero()[0, 0])
        push[r, : len(groups[k])] = groups[k]
        dist[r, k] = float("-inf")
        pull[r] = protos[int(dist[r].argmax())]
        active[r] = True
    return push, pull, active


def fna_objective(model: nn.Module, ctx: GuideContext) -> Objective:
    push, pull, active = fna_guides(ctx)
    w = active.to(push.dtype)

    def objective(z: Tensor) -> Tensor:
        f = _features(model, z)
        loss = (f.unsqueeze(1) - push).pow(2).sum(dim=(1, 2)) - (f - pull).pow(2).sum(dim=1)
        return loss * w

    return objective


def ama_guides(ctx: GuideContext) -> tuple[Tensor, Tensor]:
    """``(guides (B, G, D) L2-normalised, mask (B, G))``: same-identity features of the other side."""
    other = F.normalize(ctx.other_feats, p=2, dim=1)
    same = ctx.pids.view(-1, 1).eq(ctx.other_pids.view(1, -1)) & (ctx.pids.view(-1, 1) > 0)  # (B, M)
    if ctx.other_rows is not None:  # an image is not its own guide
        same[torch.arange(len(ctx.rows), device=same.device), ctx.other_rows] = False
    g = int(same.sum(dim=1).max()) if same.numel() else 0
    guides = torch.zeros(len(ctx.rows), max(g, 1), other.shape[1], dtype=other.dtype, device=other.device)
    mask = torch.zeros(len(ctx.rows), max(g, 1), dtype=other.dtype, device=other.device)
    for r in range(len(ctx.rows)):
        idx = same[r].nonzero().flatten()
        guides[r, : len(idx)] = other[idx]
        mask[r, : len(idx)] = 1
    return guides, mask


def ama_objective(model: nn.Module, ctx: GuideContext) -> Objective:
    guides, mask = ama_guides(ctx)

    def objective(z: Tensor) -> Tensor:
        f = F.normalize(_features(model, z), p=2, dim=1)
        return ((f.unsqueeze(1) - guides).pow(2).mean(dim=2) * mask).sum(dim=1)

    return objective


METRIC_OBJECTIVES: dict[str, Callable[[nn.Module, GuideContext], Objective]] = {
    "sma": sma_objective, "fna": fna_objective, "ama": ama_objective}
