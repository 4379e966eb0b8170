"""Square Attack in L2 and L1: the original's windowed centre-weighted updates.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack", ECCV 2020 (Alg. 3, the L2 sampling
distribution); the L1 variant of ``fra31/auto-attack @ a392200 : autoattack/square.py``
(``SquareAttack`` with ``norm='L2'`` / ``'L1'``, identical in ``pyautoattack`` 0.2.0), which these
functions follow step for step, drawing the random numbers in the original's order and form.

Window pattern :func:`eta` (the original's ``meta_pseudo_gaussian_pert``): an ``s x s`` window whose top
``s // 2`` rows are :func:`rectangles` and whose bottom rows are minus those, normalised in the norm,
transposed with probability 1/2 (one ``U[0, 1)`` draw, ``> 0.5``). :func:`rectangles` of ``a x b``
gives a cell at Chebyshev distance ``k0`` from the centre ``(a // 2, b // 2)`` the value
``sum_{k = k0}^{K-1} 1 / (k + 1)^q`` (``q = 2`` for L2, ``4`` for L1, ``K = max(a, b) // 2 + 1``, summed
in increasing ``k``), normalised in the norm.

Start: a grid of windows of side ``s = h // 5`` from ``(h - 5 s) // 2`` (``h // s`` rows and ``w // s``
columns of windows; per window one :func:`eta` and a random sign per image and channel), scaled to
the eps-sphere (L2: ``clamp(x + eps delta / |delta|_2, 0, 1)``; L1: ``x + delta`` projected onto the
L1 ball of radius ``eps (1 - 1e-6)`` intersected with the box, ``_apgd_norms.l1_projection``).

Query ``i`` on the images whose margin is still > 0: side ``s`` = ``round(sqrt(p_i h w))``, at least
3, made odd, capped at ``min(h, w)``; two windows W1 (at ``(vh, vw)``) and W2 (at ``(vh2, vw2)``), the
four corners drawn in that order; the perturbation ``delta`` of the best point loses W2 and gets in
W1 ``eta(s) * sign + delta_W1 / |delta_W1|`` (signs per image and channel), rescaled per channel so
that the mass of ``delta`` in W1 ∪ W2 plus the budget left ``eps - |delta|`` (L2: in squares,
``sqrt(max(eps^2 - |delta|^2, 0) / c + |delta_{W1∪W2}|^2)``; L1: ``(max(eps - |delta|, 0) / c +
|delta_{W1∪W2}|_1) c``) goes into W1; then back onto the sphere / the ball as at the start. The
candidate replaces the best point when its margin is lower or <= 0 (as L-inf Square).

Deviations: the original crashes on images narrower than 5 pixels and when a start window is cut by
the image border (e.g. 12 x 12); natbench refuses the first with a clear error and, for the second,
adds the part of the window inside the image (same draws).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from natbench.attacks._apgd_norms import l1_projection
from natbench.attacks.square import _rand, _random_int, _random_sign, logit_margin, p_selection, square_side

#: the power of the distance in the centre weights: 1 / (k + 1)^POWER
POWER = {"l2": 2, "l1": 4}


def _normalise_window(delta: Tensor, norm: str) -> Tensor:
    """``delta`` (2-D) divided by its L2 or L1 norm over the whole window (as the original)."""
    if norm == "l2":
        return delta / (delta ** 2).sum(dim=(0, 1), keepdim=True).sqrt()
    return delta / delta.abs().sum(dim=(0, 1), keepdim=True)


def rectangles(a: int, b: int, norm: str, device: torch.device) -> Tensor:
    """The ``a x b`` centre-weighted block (the original's ``eta_rectangles``), float32."""
    i = torch.arange(a, device=device).view(-1, 1)
    j = torch.arange(b, device=device).view(1, -1)
    ring = torch.maximum((i - a // 2).abs(), (j - b // 2).abs())  # Chebyshev distance from the centre
    delta = torch.zeros(a, b, device=device)
    for k in range(max(a // 2, b // 2) + 1):
        weight = 1.0 / (torch.tensor([[k + 1.0]], device=device) ** POWER[norm])
        delta = delta + torch.where(ring <= k, weight, torch.zeros_like(weight))
    return _normalise_window(delta, norm)


def eta(s: int, norm: str, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """The ``s x s`` window: :func:`rectangles` on top, minus them below, normalised; transposed when
    one ``U[0, 1)`` draw is ``> 0.5``."""
    top = rectangles(s // 2, s, norm, device)
    bottom = -1.0 * rectangles(s - s // 2, s, norm, device)
    delta = _normalise_window(torch.cat((top, bottom), 0), norm)
    if bool(_rand((1,), generator, device) > 0.5):
        delta = delta.permute(1, 0)
    return delta


def _lp(t: Tensor, norm: str) -> Tensor:
    """Per-image norm shaped ``(n, 1, 1, 1)`` (the original's ``lp_norm``)."""
    flat = t.reshape(t.shape[0], -1)
    v = (flat ** 2).sum(-1).sqrt() if norm == "l2" else flat.abs().sum(dim=-1)
    return v.view(-1, 1, 1, 1)


def _window_mass(t: Tensor, norm: str) -> Tensor:
    """Per image and channel norm over the last two dims, shaped ``(n, c, 1, 1)``."""
    if norm == "l2":
        return (t ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
    return t.abs().sum(dim=(-2, -1), keepdim=True)


def _to_ball(x: Tensor, delta: Tensor, eps: float, norm: str) -> Tensor:
    """The candidate from a perturbation: L2 scales it onto the eps-sphere and clamps to [0, 1]; L1
    projects ``x + delta`` onto the ball of radius ``eps (1 - 1e-6)`` ∩ box."""
    if norm == "l2":
        return torch.clamp(x + delta / (_lp(delta, "l2") + 1e-12) * eps, 0.0, 1.0)
    return x + delta + l1_projection(x, delta, eps * (1.0 - 1e-6))


def lp_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    """The original's start: a grid of :func:`eta` windows of side ``h // 5`` with a random sign per
    image, channel and window, moved onto the ball (:func:`_to_ball`)."""
    n, c, h, w = x.shape
    s = h // 5
    first = (h - 5 * s) // 2
    delta = torch.zeros_like(x)
    for bi in range(h // s):
        for bj in range(w // s):
            vh, vw = first + bi * s, first + bj * s
            window = eta(s, norm, generator, x.device).view(1, 1, s, s) * _random_sign((n, c, 1, 1), generator, x.device)
            rows, cols = max(0, min(s, h - vh)), max(0, min(s, w - vw))
            delta[:, :, vh:vh + rows, vw:vw + cols] += window[:, :, :rows, :cols]
    return _to_ball(x, delta, eps, norm)


def square_lp_single_run(
    objective, x: Tensor, y: Tensor, *, eps: float, norm: str, n_queries: int, p_init: float,
    rescale_schedule: bool, generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One restart of L2 or L1 Square on ``x`` (all clean-correct): ``(x_best, margin_min)``."""
    n, c, h, w = x.shape
    if min(h, w) < 5:
        raise ValueError(f"square attack in {norm} needs images of at least 5 x 5 pixels (the original's start "
                         f"grid has side h // 5), got {h} x {w}; use the linf threat model or larger images")
    dev = x.device
    x_best = lp_start(x, eps, norm, generator)
    with torch.no_grad():
        margin_min = logit_margin(objective(x_best), y)
    if bool((margin_min < 0).all()):
        return x_best, margin_min
    for i_iter in range(n_queries):
        idx = (margin_min > 0).nonzero().flatten()
        if idx.numel() == 0:
            break
        x_curr, x_best_curr, y_curr, m_curr = x[idx], x_best[idx], y[idx], margin_min[idx]
        delta = x_best_curr - x_curr
        s = square_side(p_selection(i_iter, p_init, n_queries, rescale_schedule), c, h, w, smallest=3, odd=True)
        vh, vw = _random_int(h - s, generator, dev), _random_int(w - s, generator, dev)
        w1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        mass_w1 = _window_mass(delta[w1], norm)
        vh2, vw2 = _random_int(h - s, generator, dev), _random_int(w - s, generator, dev)
        w2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        both = torch.zeros_like(x_curr)
        both[w1] = 1.0
        both[w2] = 1.0
        mass_both = _window_mass(delta * both, norm)
        used = _lp(delta, norm)
        new = eta(s, norm, generator, dev).view(1, 1, s, s) * _random_sign((idx.numel(), c, 1, 1), generator, dev)
        # contiguous as the original's (a transposed eta would otherwise give a transposed layout, and
        # the window sums below another summation order)
        new = new.contiguous() + delta[w1] / (1e-12 + mass_w1)
        if norm == "l2":
            budget = torch.max((eps * torch.ones_like(used)) ** 2 - used ** 2, torch.zeros_like(used))
            new = new / (1e-12 + _window_mass(new, norm)) * (budget / c + mass_both ** 2).sqrt()
        else:
            budget = torch.max(eps * torch.ones_like(used) - used, torch.zeros_like(used))
            new = new / (1e-12 + _window_mass(new, norm)) * (budget / c + mass_both) * c
        delta[w2] = 0.0
        delta[w1] = new
        x_new = _to_ball(x_curr, delta, eps, norm)
        with torch.no_grad():
            margin = logit_margin(objective(x_new), y_curr)
        improved = (margin < m_curr) | (margin <= 0)
        margin_min[idx] = torch.where(improved, margin, m_curr)
        x_best[idx] = torch.where(improved.view(-1, 1, 1, 1), x_new, x_best_curr)
    return x_best, margin_min
