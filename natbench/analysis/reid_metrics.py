"""Re-identification retrieval metrics: distance matrices, CMC and mAP with the Market-1501 protocol.

The same numbers as torchreid's ``metrics.compute_distance_matrix`` and ``metrics.evaluate_rank``
(``KaiyangZhou/deep-person-reid: torchreid/metrics/{distance,rank}.py``, ``eval_market1501``, the
Python path; notes/formats.md Sec. 3), checked against torchreid in ``tests/test_reid_metrics.py``:

- ``"euclidean"`` is the **squared** Euclidean distance (as torchreid; the ranking is that of the
  Euclidean distance), ``"cosine"`` is ``1 - <q/|q|, g/|g|>``;
- per query, the gallery is sorted by increasing distance (``np.argsort``, the same call as torchreid,
  so ties are broken identically) and gallery items with the query's pid **and** camera are removed;
  ``drop_junk=True`` also removes gallery pid ``-1`` (the official protocol's junk; torchreid's reader
  drops those files, so on data read by it the two agree);
- CMC: cumulative sum of the match vector clipped to 1, truncated to ``max_rank`` (clipped to the
  gallery size); AP = ``sum_k precision@k * match_k / #matches``; queries without any remaining
  match are skipped (torchreid asserts at least one is valid; here ``valid`` says which, and
  ``num_valid == 0`` gives NaN metrics). Where torchreid's Python path fails on a small gallery (a
  query with fewer than ``max_rank`` items left gives a shorter CMC row and NumPy >= 1.24 refuses the
  ragged array), the row is continued with 1 (the query's match was found before its end).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DISTANCES = ("euclidean", "cosine")


def distance_matrix(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """``(num_q, num_g)`` distances (smaller = closer), as ``torchreid.metrics.compute_distance_matrix``."""
    if metric == "euclidean":
        m, n = qf.size(0), gf.size(0)
        d = qf.pow(2).sum(dim=1, keepdim=True).expand(m, n) + gf.pow(2).sum(dim=1, keepdim=True).expand(n, m).t()
        return d.addmm(qf, gf.t(), beta=1, alpha=-2)
    if metric == "cosine":
        return 1 - F.normalize(qf, p=2, dim=1) @ F.normalize(gf, p=2, dim=1).t()
    raise ValueError(f"distance metric {metric!r}: expected one of {', '.join(DISTANCES)}")


@dataclass
class RankResult:
    cmc: np.ndarray  # float64 (max_rank,): CMC averaged over valid queries (cmc[0] = rank-1)
    mAP: float  # mean AP over valid queries
    ap: np.ndarray  # float64 (num_q,): AP per query (NaN when the query is not valid)
    rank1: np.ndarray  # bool (num_q,): the nearest kept gallery item is a true match (False when not valid)
    valid: np.ndarray  # bool (num_q,): the query has a true match left after the removals
    num_valid: int

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based); the last CMC value when the gallery is shorter than ``k``."""
        if not len(self.cmc):
            return float("nan")
        return float(self.cmc[min(k, len(self.cmc)) - 1])


def market_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, drop_junk: bool = False) -> RankResult:
    """CMC and mAP with the Market-1501 protocol; all inputs numpy (or tensors), ``distmat`` (num_q, num_g)."""
    distmat = np.asarray(distmat.cpu().numpy() if isinstance(distmat, torch.Tensor) else distmat)
    q_pids, g_pids, q_camids, g_camids = (np.asarray(a.cpu().numpy() if isinstance(a, torch.Tensor) else a)
                                          for a in (q_pids, g_pids, q_camids, g_camids))
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    ap = np.full(num_q, np.nan)
    rank1 = np.zeros(num_q, dtype=bool)
    valid = np.zeros(num_q, dtype=bool)
    for q in range(num_q):
        order = np.argsort(distmat[q])  # the per-row call torchreid makes on the whole matrix
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        if drop_junk:
            remove |= g_pids[order] == -1
        raw = (g_pids[order][~remove] == q_pids[q]).astype(np.int64)
        if not raw.any():
            continue
        valid[q] = True
        cmc = np.minimum(raw.cumsum(), 1)[:max_rank].astype(np.float64)
        if len(cmc) < max_rank:
            cmc = np.concatenate([cmc, np.ones(max_rank - len(cmc))])
        cmc_sum += cmc
        rank1[q] = bool(raw[0])
        precision = raw.cumsum() / np.arange(1, len(raw) + 1)
        ap[q] = float((precision * raw).sum() / raw.sum())
    n = int(valid.sum())
    cmc = cmc_sum / n if n else np.full(max_rank, np.nan)
    return RankResult(cmc, float(np.mean(ap[valid])) if n else float("nan"), ap, rank1, valid, n)
