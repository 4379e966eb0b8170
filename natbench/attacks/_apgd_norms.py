"""APGD's norm-specific pieces: random start, step, L1 projection, L1 sparsity schedule, ``use_largereps``.

After the authors' code ``fra31/auto-attack`` as packaged in ``pyautoattack`` 0.2.0
(``autopgd_base.py``: ``L1_projection``, ``APGDAttack.attack_single_run``'s L2 and L1 branches and
``APGDAttack.decr_eps_pgd``), followed step for step (the same operations in the same order, so
the iterates agree with the original's to the last bit on the same RNG state):

- **L-inf** (Croce & Hein, ICML 2020): start ``x + eps t / ||t||_inf``, ``t ~ U(-1, 1)``; signed
  step; clamp to the eps-box and [0, 1] (in :mod:`natbench.attacks._apgd_core`);
- **L2** (same paper): start ``x + eps t / ||t||_2``, ``t ~ N(0, I)``; step ``eta g / ||g||_2``; the
  projection scales the perturbation to norm ``min(eps, ||delta||_2)`` and then clamps to [0, 1]
  (not the exact projection onto ball ∩ box; the original's), before and after the momentum step;
  step size ``2 eps``, checkpoints as L-inf;
- **L1** (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image
  classifiers", ICML 2021): start ``x + t + P(t)``, ``t ~ N(0, I)`` and ``P`` the projection onto the
  L1 ball ∩ [0, 1] (:func:`l1_projection`); the step moves along the sign of the gradient restricted
  to its ``topk`` largest entries, normalised in L1, with **no momentum**; step size ``eps``. A
  checkpoint every ``max(int(0.04 N), 1)`` steps (fixed, not shrinking): if the sparsity ``||x_best - x||_0``
  of the best point fell below 95 % of the last checkpoint's, the step is reset to ``eps`` and the
  run restarts from its best point; otherwise the step is divided by 1.5 (not below ``eps / 10``);
  ``topk`` becomes ``||x_best - x||_0 / n / 1.5``. The initial ``topk`` is 0.2 (from a random start) or
  the start's sparsity ``/ n / 1.5`` (from a given start, ``x_init``);
- **use_largereps** (L1 only, AutoAttack's L1 standard version): one run is three stages at eps
  ``3 eps, 2 eps, eps`` of ``ceil(0.3 N), ceil(0.3 N)`` and the rest of the N iterations (N = 100:
  30, 30, 40), each started from
  the previous stage's best point projected to its eps (the first from ``x + t``, ``t ~ N(0, I)``,
  projected to ``3 eps``); only the last stage's success counts.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: The threat-model norms APGD implements (natbench's spelling).
APGD_NORMS = ("linf", "l2", "l1")


def alpha(norm: str) -> float:
    """The initial step size as a multiple of eps: 2 (L-inf, L2), 1 (L1)."""
    return 1.0 if norm == "l1" else 2.0


def _bview(t: Tensor, ref: Tensor) -> Tensor:
    """A per-sample ``(B,)`` tensor shaped to broadcast over ``ref``."""
    return t.view(-1, *([1] * (ref.dim() - 1)))


def l2_of(t: Tensor) -> Tensor:
    """Per-sample ``sqrt(sum t^2)`` (the original's ``L2_norm``: this formula, not ``torch.norm``)."""
    return (t ** 2).reshape(t.shape[0], -1).sum(-1).sqrt()


def l1_of(t: Tensor) -> Tensor:
    """Per-sample ``sum |t|``."""
    return t.abs().reshape(t.shape[0], -1).sum(-1)


def l0_of(t: Tensor) -> Tensor:
    """Per-sample number of non-zero entries (int64, as the original's ``L0_norm``)."""
    return (t != 0.0).reshape(t.shape[0], -1).sum(-1)


def unit(t: Tensor, norm: str) -> Tensor:
    """``t / (||t||_p + 1e-12)`` per sample (the original's ``normalize``)."""
    if norm == "linf":
        n = t.abs().reshape(t.shape[0], -1).amax(1)
    elif norm == "l2":
        n = l2_of(t)
    else:
        n = l1_of(t)
    return t / (_bview(n, t) + 1e-12)


# --------------------------------------------------------------------------- L1 projection


def l1_projection(x: Tensor, y: Tensor, eps: float) -> Tensor:
    """The correction ``d`` with ``||y + d||_1 <= eps`` and ``0 <= x + y + d <= 1``: ``x + y + d`` is the
    projection of ``x + y`` onto the L1 ball of radius ``eps`` around ``x`` intersected with the box
    (``x`` in [0, 1]); the original's ``L1_projection`` (Croce & Hein, ICML 2021, Lemma 2).

    Per coordinate the magnitude ``|y_i|`` is reduced by ``r_i(a) = clip(a, m_i, |y_i|)``, where
    ``m_i >= 0`` is the least reduction that brings ``x_i + y_i`` into [0, 1]; the threshold ``a`` solves
    ``sum_i r_i(a) = ||y||_1 - eps`` on the rows where the box alone does not reach the ball (else
    ``a = 0``, the box projection). ``sum_i r_i`` is piecewise linear in ``a`` with breakpoints
    ``{m_i} ∪ {|y_i|}``: sorted, accumulated with the number of coordinates active between two of
    them, and the segment holding the solution found by bisection over ``ceil(log2(2n))`` rounds, as
    the original does (including its use of the next segment's slope when the solution lies in the
    first segment). Computed in float32, as the original.
    """
    shape = x.shape
    b = x.shape[0]
    xf = x.detach().float().reshape(b, -1)
    yf = y.detach().float().reshape(b, -1)
    n = xf.shape[1]
    sign = yf.sign()
    # minus the least reduction that brings each coordinate into the box (<= 0), and minus the most (|y|)
    least = torch.min(torch.zeros_like(yf), torch.min(1 - xf - yf, xf + yf))
    most = -yf.abs()
    d = least.clone()

    breaks, order = torch.sort(-torch.cat((least, most), 1), dim=1)
    nxt = torch.cat((breaks[:, 1:], torch.zeros(b, 1, device=breaks.device)), 1)
    # +1 where a coordinate starts being reduced (a box breakpoint), -1 where it reaches zero
    active = (2 * (order < n).float() - 1).cumsum(dim=1)
    box_total = -least.sum(dim=1)
    slack = eps - yf.abs().sum(dim=1)
    rows = (box_total + slack < 0).nonzero().squeeze(1)  # the box alone leaves them outside the ball
    total = box_total.unsqueeze(-1) + torch.cumsum((nxt - breaks) * active, dim=1)

    lo = torch.zeros(rows.shape[0], device=breaks.device)
    hi = torch.full_like(lo, float(breaks.shape[1] - 1))
    for _ in range(int(math.ceil(math.log2(breaks.shape[1])))):
        mid = torch.floor((lo + hi) / 2.0)
        short = total[rows, mid.long()] + slack[rows] < 0
        lo = torch.where(short, mid, lo)
        hi = torch.where(short, hi, mid)
    seg = lo.long()
    a = (-total[rows, seg] - slack[rows]) / active[rows, seg + 1] + nxt[rows, seg]
    d[rows] = -torch.min(torch.max(-least[rows], a.unsqueeze(-1)), -most[rows])
    return (sign * d).view(shape)


# --------------------------------------------------------------------------- start and step


def draw_noise(x: Tensor, norm: str, generator: torch.Generator | None) -> Tensor:
    """The start's noise as the original draws it: ``2 U[0,1) - 1`` (L-inf), ``N(0, I)`` (L2, L1)."""
    device = x.device if generator is None else generator.device
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    return t.to(x.device)


def start_from(x: Tensor, t: Tensor, eps: float, norm: str) -> Tensor:
    """The random start from noise ``t``, clamped to [0, 1] (see the module doc)."""
    if norm == "l1":
        return torch.clamp(x + t + l1_projection(x, t, eps), 0.0, 1.0)
    if norm == "l2":  # eps * (t / ||t||): the original's order of operations
        return torch.clamp(x + eps * unit(t, norm), 0.0, 1.0)
    # L-inf: (eps * t) / ||t||, natbench's order since issue 17 (the flags were checked equal to the
    # original's; kept so that stored L-inf results do not move)
    norm_t = _bview(t.abs().reshape(t.shape[0], -1).amax(1), t)
    return torch.clamp(x + eps * t / (norm_t + 1e-12), 0.0, 1.0)


def draw_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    """A random start in the eps-ball of ``norm`` (the original's draw and formula)."""
    return start_from(x, draw_noise(x, norm, generator), eps, norm)


def l2_ball(x: Tensor, x_new: Tensor, eps: float) -> Tensor:
    """``clamp(x + (x_new - x) / ||.||_2 * min(eps, ||x_new - x||_2), 0, 1)`` (the original's L2 projection)."""
    delta = x_new - x
    return torch.clamp(x + unit(delta, "l2") * torch.clamp(_bview(l2_of(delta), x), max=eps), 0.0, 1.0)


def l2_step(x: Tensor, x_adv: Tensor, momentum: Tensor, grad: Tensor, step_size: Tensor, eps: float,
            a: float) -> Tensor:
    """The L2 momentum step: a normalised-gradient step, projected, then the momentum mix, projected."""
    z = l2_ball(x, x_adv + step_size * unit(grad, "l2"), eps)
    return l2_ball(x, x_adv + (z - x_adv) * a + momentum * (1 - a), eps)


def l1_step(x: Tensor, x_adv: Tensor, grad: Tensor, step_size: Tensor, topk: Tensor, eps: float) -> Tensor:
    """The L1 step: the sign of the gradient on its ``topk`` fraction of largest entries, normalised in
    L1, times the step size; projected onto the L1 ball ∩ [0, 1] (no momentum)."""
    b = x.shape[0]
    n = grad[0].numel()
    ranked = grad.abs().reshape(b, -1).sort(-1)[0]
    pos = torch.clamp((1.0 - topk) * n, min=0, max=n - 1).long()
    thresh = _bview(ranked.gather(1, pos.view(-1, 1)).squeeze(1), x)
    direction = (grad * (grad.abs() >= thresh).float()).sign()
    moved = x_adv + step_size * direction / (_bview(l1_of(direction), x) + 1e-10) - x
    return x + moved + l1_projection(x, moved, eps)


# --------------------------------------------------------------------------- L1 sparsity schedule


class L1Sparsity:
    """Per-sample state of L1-APGD's sparsity-adaptive step: ``topk`` (the fraction of coordinates a
    step moves) and the best point's sparsity at the last checkpoint (``sp_old``)."""

    #: divide the step by this at a checkpoint where the sparsity did not fall
    REDUCE = 1.5
    #: the step size never falls below ``alpha * eps / MIN_FRACTION``
    MIN_FRACTION = 10.0

    def __init__(self, x: Tensor, x_start: Tensor, from_init: bool) -> None:
        self.n = x[0].numel()
        if from_init:
            self.sp_old = l0_of(x_start - x)
            self.topk = self.sp_old / self.n / 1.5
        else:
            self.topk = 0.2 * torch.ones(x.shape[0], device=x.device)
            self.sp_old = self.n * torch.ones_like(self.topk)

    @staticmethod
    def interval(n_iter: int) -> int:
        """Steps between two L1 checkpoints: ``max(int(0.04 N), 1)`` (fixed)."""
        return max(int(0.04 * n_iter), 1)

    def keep(self, rows: Tensor) -> None:
        """Keep only the samples ``rows`` (a boolean mask): early stop dropped the others."""
        self.topk, self.sp_old = self.topk[rows], self.sp_old[rows]

    def checkpoint(self, x: Tensor, x_best: Tensor, step_size: Tensor, eps: float) -> Tensor:
        """Update the step sizes in place and the sparsity state; returns the samples that restart
        from their best point (their sparsity fell below 95 % of the last checkpoint's)."""
        sp = l0_of(x_best - x)
        fell = (sp / self.sp_old) < 0.95
        self.topk = sp / self.n / 1.5
        step_size[fell] = alpha("l1") * eps
        step_size[~fell] /= self.REDUCE
        step_size.clamp_(alpha("l1") * eps / self.MIN_FRACTION, alpha("l1") * eps)
        self.sp_old = sp.clone()
        return fell


def largereps_schedule(eps: float, n_iter: int) -> list[tuple[float, int]]:
    """``use_largereps``' stages ``[(3 eps, ceil(0.3 N)), (2 eps, ceil(0.3 N)), (eps, rest)]``."""
    first = [math.ceil(0.3 * n_iter), math.ceil(0.3 * n_iter)]
    return list(zip([3.0 * eps, 2.0 * eps, 1.0 * eps], first + [n_iter - sum(first)]))
