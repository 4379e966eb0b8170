"""FAB's L2 and L1 projections onto a hyperplane intersected with the image box.

Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack", ICML
2020, Prop. 3.1 / Sec. 3.1 (the box-constrained projection). Implemented after ``fra31/auto-attack @
a392200 : autoattack/fab_projections.py`` (``projection_l2``, ``projection_l1``; identical in
``pyautoattack`` 0.2.0), computing the same quantities in the same floating-point order, including
the original's bisection (``ceil(log2 n)`` halvings; enough for every segment a reachable hyperplane
can end in), so that FAB's iterates agree with the original's bit for bit.

Each function takes rows ``t`` (points in [0, 1]^n), ``w`` (normals) of shape (N, n) and ``b`` (N,)
and returns the step ``d`` (N, n) with ``w.(t + d) = b`` (when the box reaches the hyperplane) that is
minimal in its norm. Both first orient each hyperplane so that ``c = w.t - b >= 0`` (the step has to
lower ``w.z`` by ``c``). Coordinates with ``|w_i| <= 1e-8`` never move.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: a normal's coordinates at most this large (in absolute value) are treated as 0 (the original's 1e-8)
W_TINY = 1e-8
#: the original's stand-in for an infinite breakpoint
BIG = 1e12


def _orient(t: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(w', c)``: the normal flipped row-wise so that ``c = w'.t - b' >= 0``, and that ``c``."""
    c = (w * t).sum(1) - b
    sign = torch.where(c >= 0, 1.0, -1.0).to(w.dtype).unsqueeze(1)
    return w * sign, c * sign.squeeze(1)


def _bisect_last_positive(v: Tensor, hi: int, n_iter: int) -> Tensor:
    """The original's bisection: ``lo = 0, hi``; ``n_iter`` times ``mid = (lo + hi) // 2`` and
    ``lo = mid`` where ``v[:, mid] > 0``, else ``hi = mid``. Returns ``lo`` (LongTensor (N,)): the last
    position with ``v > 0`` when ``v`` is nonincreasing and ``n_iter`` halvings suffice."""
    lo = torch.zeros(v.shape[0], dtype=torch.long, device=v.device)
    up = torch.full_like(lo, hi)
    for _ in range(n_iter):
        mid = (lo + up) // 2
        pos = v.gather(1, mid.unsqueeze(1)).squeeze(1) > 0
        lo = torch.where(pos, mid, lo)
        up = torch.where(pos, up, mid)
    return lo


def project_l2_hyperplane(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Row-wise minimal L2 step ``d`` with ``w.(t + d) = b`` and ``t + d`` in [0, 1]^n.

    The minimiser is ``d_i = -lam w_i`` clipped to the box: coordinate i moves along ``-w_i`` until it
    hits its face at ``lam = r_i = max(t_i / w_i, (t_i - 1) / w_i)`` (``BIG`` where ``|w_i| <= 1e-8``).
    The decrease ``g(lam) = sum_i w_i^2 min(lam, r_i)`` is piecewise linear; with the breakpoints
    sorted (``rs``) and ``tail_k = sum_{j>k} w_j^2``, ``s_0 = -W rs_0`` (``W = |w|^2``) and
    ``s_{k+1} = s_k - (rs_{k+1} - rs_k) tail_k`` give ``s_k = -g(rs_k)`` (infinite breakpoints count
    as 0, as in the original). Three cases per row:

    - ``c < g(rs_0)``: no coordinate clips, ``d = -(c / W) w``;
    - ``c > g(inf)`` (the box does not reach the hyperplane): every coordinate moves to its face;
    - otherwise bisection finds the segment ``k`` with ``g(rs_k) < c``; ``lam = rs_k + (c - g(rs_k))
      / tail_k`` (0 where ``tail_k = 0``) and ``d_i`` is the face step where ``lam > r_i``, else
      ``-lam w_i``.
    """
    w, c = _orient(t, w, b)
    n = w.shape[1]
    live = (w.abs() > W_TINY).to(w.dtype)
    r = torch.max(t / w, (t - 1) / w).clamp(min=-BIG, max=BIG)
    r = r.masked_fill(w.abs() < W_TINY, BIG)
    r = torch.where(r == -BIG, -r, r)
    rs, order = torch.sort(r, dim=1)
    rs_next = torch.nn.functional.pad(rs[:, 1:], (0, 1))
    rs = rs.masked_fill(rs == BIG, 0)
    rs_next = rs_next.masked_fill(rs_next == BIG, 0)
    w2s = (w ** 2).gather(1, order)
    total = w2s.sum(dim=1, keepdim=True)
    tail = total - torch.cumsum(w2s, dim=1)
    d = -(r * w) * live  # every coordinate at its face
    first = total * rs[:, 0:1]
    s = torch.cat((-first, torch.cumsum((rs - rs_next) * tail, dim=1) - first), 1)
    unclipped = s[:, 0] + c < 0
    unreachable = (d * w).sum(dim=1) + c > 0
    mid = ~(unclipped | unreachable)
    if unclipped.any():
        lam = c[unclipped] / total[unclipped].squeeze(-1)
        d[unclipped] = -lam.unsqueeze(-1) * w[unclipped]
    if mid.any():
        k = _bisect_last_positive(s[mid] + c[mid].unsqueeze(1), n - 1, math.ceil(math.log2(n))).unsqueeze(1)
        tail_k = tail[mid].gather(1, k).squeeze(1)
        lam = (s[mid].gather(1, k).squeeze(1) + c[mid]) / tail_k + rs[mid].gather(1, k).squeeze(1)
        lam = torch.where(tail_k == 0, torch.zeros_like(lam), lam).unsqueeze(-1)
        d[mid] = torch.where(lam > r[mid], d[mid], -lam * w[mid])
    return d * live


def project_l1_hyperplane(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Row-wise minimal L1 step ``d`` with ``w.(t + d) = b`` and ``t + d`` in [0, 1]^n.

    Moving coordinate i by one unit lowers ``w.z`` by ``|w_i|``, so the cheapest step moves the
    coordinates in decreasing ``|w_i|`` (increasing ``1 / |w_i|``) fully to their faces (down where
    ``w_i > 0``, up where ``w_i < 0``; decrease ``-ds_i = |w_i| * room_i``) until the remaining
    ``s_k = c + sum_{j<k} ds_j`` would turn negative, and moves the next one partially:
    ``d_i = -s_k / w_i``. If even all full moves do not reach the hyperplane (``s_n >= 0``), every
    coordinate moves to its face (the original's behaviour). The position ``k`` (the last with
    ``s_k > 0``) is found by the original's bisection over ``s`` (``hi = n + 1``). Ties in ``|w_i|``
    are broken by ``torch.argsort`` as in the original.
    """
    w, c = _orient(t, w, b)
    n = w.shape[1]
    cost = (1 / w).abs().clamp_max(BIG)
    order = torch.argsort(cost, dim=1)
    position = torch.argsort(order)  # sorted position of each coordinate
    d = (-t + (w < 0).to(w.dtype)) * (w != 0).to(w.dtype)  # every coordinate at its face
    ds = torch.min(-w * t, w * (1 - t)).gather(1, order)
    s = torch.cumsum(torch.cat((c.unsqueeze(-1), ds), 1), dim=1)
    reach = s[:, -1] < 0
    if reach.any():
        k = _bisect_last_positive(s[reach], n + 1, math.ceil(math.log2(n)))
        rows = reach.nonzero().squeeze(1)
        coord = order[rows, k]
        lam = -s[rows, k] / w[rows, coord]
        d[rows] = d[rows] * (position[rows] < k.unsqueeze(1)).to(w.dtype)
        d[rows, coord] = lam
    return d * (w.abs() > W_TINY).to(w.dtype)
