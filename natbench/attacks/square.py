"""Square Attack: score-based random search over square-shaped updates (L-inf here; L2 and L1 in
:mod:`natbench.attacks._square_lp`, the original's windowed updates, chosen by the bound ``self.norm``
with the same schedule, query loop and acceptance rule).

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020 (Alg. 1 with the L-inf sampling distribution of Alg. 2).
Implemented after ``fra31/auto-attack @ a392200 : autoattack/square.py`` (``SquareAttack``,
``norm='Linf'``, ``loss='margin'``) as AutoAttack's ``version='standard'`` builds it:
``n_queries=5000, p_init=0.8, n_restarts=1, resc_schedule=False``.

Per attacked image (only the clean-correct ones, and within the loop only those whose margin is
still > 0 are queried; one forward per query):

- margin ``m(x') = z_y(x') - max_{j != y} z_j(x')`` on the logits, minimised;
- start: vertical stripes, ``x + eps * s`` with one random sign ``s`` per (channel, column),
  clamped to [0, 1];
- query ``i`` (0-indexed): side ``s_i = min(max(round(sqrt(p_i * H*W)), 1), H, W)``, top-left corner
  ``(floor((H - s_i) * u1), floor((W - s_i) * u2))`` with ``u ~ U[0, 1)``, and one random sign per
  channel: the window of the current best point moves by ``2 * eps * sign``, then the whole image is
  clamped to the eps-ball and [0, 1]. The candidate replaces the best point when its margin is lower
  or <= 0 (misclassified); a point with margin <= 0 is never queried again.
- ``p_i`` is :func:`p_selection`: ``p_init`` halved after iterations 10, 50, 200, 500, 1000, 2000,
  4000, 6000, 8000. **The original's unrescaled schedule** (``resc_schedule=False`` in AutoAttack):
  the thresholds are applied to the raw iteration index, *not* to ``i / n_queries * 10000``; with
  5000 queries the last two halvings are never reached. ``rescale_schedule=True`` gives the
  rescaled variant (torchattacks' default).

Random numbers are drawn in the original's order and form (``sign(2u - 1)`` for the stripes and the
window signs, ``long((h - s) * u)`` for the corner), all from ``generator``: with a CPU generator
seeded ``k`` the attack reproduces ``SquareAttack(seed=k)`` / ``torchattacks.Square(seed=k)`` on CPU.
The original's corner draw never reaches ``H - s`` (the last row/column of positions); kept.

Returns, per image, the lowest-margin point found (over restarts); the clean image for clean
misclassified images (the original returns the clean image for every image it did not fool; the
robust accuracy is the same). Threat model: ``||x_adv - x||_inf <= eps``, images in [0, 1].
Objective kind ``"logits"``: the objective is called on sub-batches of rows (the still-robust ones),
as the original calls the model.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from natbench.attacks._base import NORMS, LinfAttack, check_eps
from natbench.attacks._clean import clean_logits
from natbench.errors import ConfigError

#: Iterations after which p is halved (``p_selection`` of the original), in increasing order.
P_THRESHOLDS: tuple[int, ...] = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(it: int, p_init: float = 0.8, n_queries: int = 5000, rescale: bool = False) -> float:
    """The fraction of pixels the square covers at (0-indexed) iteration ``it``.

    ``p_init / 2**k`` with ``k`` the number of thresholds in :data:`P_THRESHOLDS` strictly below the
    (optionally rescaled: ``int(it / n_queries * 10000)``) iteration index.
    """
    if rescale:
        it = int(it / n_queries * 10000)
    k = sum(1 for t in P_THRESHOLDS if it > t)
    return p_init / 2**k


def square_side(p: float, c: int, h: int, w: int, smallest: int = 1, odd: bool = False) -> int:
    """Side of the square for fraction ``p`` of an image with ``c`` channels of ``h x w`` pixels: at
    least ``smallest``, made odd (+1) when ``odd``, at most ``min(h, w)`` (L-inf: 1, not odd; the
    original's L2/L1: 3, odd)."""
    s = max(int(round(math.sqrt(p * (c * h * w) / c))), smallest)  # the original's float order
    if odd and s % 2 == 0:
        s += 1
    return min(s, min(h, w))


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{j != y} z_j`` per row (> 0: correctly classified with that margin)."""
    y = y.long().view(-1, 1)
    true = logits.gather(1, y).squeeze(1)
    other = logits.scatter(1, y, float("-inf")).amax(dim=1)
    return true - other


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``U[0, 1)`` of ``shape`` from ``generator`` (on its own device; the global RNG of ``device`` when
    None), moved to ``device``."""
    gen_device = device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _random_sign(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``sign(2u - 1)``, ``u ~ U[0, 1)``: +-1 (0 only when u is exactly 1/2), as the original draws it."""
    return torch.sign(2 * _rand(shape, generator, device) - 1)


def _random_int(high: int, generator: torch.Generator | None, device: torch.device) -> int:
    """``long(high * u)`` with ``u ~ U[0, 1)`` in float32, as the original draws the corner."""
    return int((high * _rand((1,), generator, device)).long().item())


def square_linf_single_run(
    objective, x: Tensor, y: Tensor, *, eps: float, n_queries: int, p_init: float, rescale_schedule: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One restart of L-inf Square on ``x`` (all clean-correct): ``(x_best, margin_min)``."""
    n, c, h, w = x.shape
    dev = x.device
    x_best = torch.clamp(x + eps * _random_sign((n, c, 1, w), generator, dev).to(x.dtype), 0.0, 1.0)
    with torch.no_grad():
        margin_min = logit_margin(objective(x_best), y)
    if bool((margin_min < 0).all()):
        return x_best, margin_min
    for i_iter in range(n_queries):
        idx = (margin_min > 0).nonzero().flatten()
        if idx.numel() == 0:
            break
        x_curr, x_best_curr, y_curr, m_curr = x[idx], x_best[idx], y[idx], margin_min[idx]
        s = square_side(p_selection(i_iter, p_init, n_queries, rescale_schedule), c, h, w)
        vh = _random_int(h - s, generator, dev)
        vw = _random_int(w - s, generator, dev)
        window = 2.0 * eps * _random_sign((c, 1, 1), generator, dev).to(x.dtype)
        delta = torch.zeros((c, h, w), device=dev, dtype=x.dtype)
        delta[:, vh:vh + s, vw:vw + s] = window
        x_new = torch.minimum(torch.maximum(x_best_curr + delta, x_curr - eps), x_curr + eps)
        x_new = torch.clamp(x_new, 0.0, 1.0)
        with torch.no_grad():
            margin = logit_margin(objective(x_new), y_curr)
        improved = (margin < m_curr) | (margin <= 0)
        margin_min[idx] = torch.where(improved, margin, m_curr)
        x_best[idx] = torch.where(improved.view(-1, 1, 1, 1), x_new, x_best_curr)
    return x_best, margin_min


class Square(LinfAttack):
    """Square Attack (Andriushchenko et al., ECCV 2020) in L-inf, L2 or L1, AutoAttack-standard settings."""

    name = "square"
    objective_kind = "logits"
    norms = NORMS
    black_box = True  # queries the model's outputs only, never its gradient

    @dataclass(frozen=True)
    class Params:
        n_queries: int = 5000  # queries per restart (AutoAttack standard: 5000)
        p_init: float = 0.8  # initial fraction of pixels changed by a square (AutoAttack: 0.8)
        restarts: int = 1  # restarts, each on the still-robust images only (AutoAttack standard: 1)
        rescale_schedule: bool = False  # False: the original's p schedule on the raw iteration (AutoAttack)

    def __init__(self, params: "Square.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.n_queries < 0 or p.restarts < 1 or not (0 < p.p_init <= 1):
            raise ConfigError(
                f"attack '{self.name}' needs n_queries >= 0, restarts >= 1, 0 < p_init <= 1; got {p}."
            )

    def __call__(self, objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        p = self.params
        x = x.detach()
        y = objective.y.to(x.device).long()
        run = square_linf_single_run
        if self.norm != "linf":
            from natbench.attacks._square_lp import square_lp_single_run

            run = functools.partial(square_lp_single_run, norm=self.norm)
        if x.dim() != 4:
            raise ValueError(f"square attack needs images (B, C, H, W), got shape {tuple(x.shape)}")
        out = x.clone()
        robust = clean_logits(objective, x).argmax(1) == y  # only clean-correct images are attacked
        best_margin = torch.full((x.shape[0],), float("inf"), device=x.device)
        for _ in range(p.restarts):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            x_run, m_run = run(
                objective, x[idx], y[idx], eps=eps, n_queries=p.n_queries, p_init=p.p_init,
                rescale_schedule=p.rescale_schedule, generator=generator,
            )
            with torch.no_grad():
                fooled = objective(x_run).argmax(1) != y[idx]
            keep = fooled | (m_run < best_margin[idx])
            out[idx[keep]] = x_run[keep]
            best_margin[idx[keep]] = m_run[keep]
            robust[idx[fooled]] = False
        return out
