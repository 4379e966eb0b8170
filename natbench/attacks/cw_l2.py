"""CW-L2: the Carlini-Wagner L2 attack with its binary search over c (a minimum-norm attack, see :mod:`._minnorm`).

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, following
the authors' ``carlini/nn_robust_attacks : l2_attack.py`` (untargeted). In tanh space,
``x' = (tanh(w + m) + 1) / 2`` with ``w = atanh((2x - 1) * 0.999999)`` and the modifier ``m``
starting at 0, Adam (lr 1e-2, torch's betas/eps) minimises per sample

    ||x' - x||_2^2 + c * max(z_y(x') - max_{j != y} z_j(x') + kappa, 0)

for ``steps`` iterations (the point of each iteration is the one the gradient is taken at). The
smallest-L2 iterate that is misclassified (``argmax`` of the logits with ``z_y + kappa``) is kept
across all binary-search steps. After each binary-search step, per sample: success -> ``upper =
min(upper, c)``, else ``lower = max(lower, c)``; ``c = (lower + upper) / 2`` once an upper bound
exists, else ``c = 10 c``; with 10 or more search steps the last runs at ``c = upper`` (the
authors' ``repeat``). Adam and ``m`` restart at each binary-search step.

Defaults: the authors' ``binary_search_steps = 9``, ``initial_const = 1e-3``, ``lr = 1e-2``,
``kappa = 0``, ``abort_early = True``; ``steps = 1000`` instead of their 10000: 9 x 1000 gradient
steps per point is already ~90x PGD-100, abort_early ends most searches long before, and the
authors' value is one setting away (the quick suites use fewer). ``torchattacks.CW`` (v3.5.1) is the
inner loop alone: c = 1 fixed, no binary search, 50 steps.

Deviations. (1) abort_early is decided per sample (a point stops its search step when, at every
``steps // 10`` iterations, its own loss exceeds 0.9999 x its loss at the previous check), not on
the batch's summed loss as the authors' (and torchattacks'), so a point's result does not depend on
the other points of its batch (evaluation splits and shards batches). (2) The L2 distance is to
``x`` itself, not to the authors' squashed ``(tanh(w) + 1) / 2`` (they differ by < 1e-6 per pixel).

Test: ``tests/test_cw_l2.py`` (one search step with c fixed equals ``torchattacks.CW`` per sample).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natbench.attacks._base import lp_norms
from natbench.attacks._minnorm import MinNormAttack, margin
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError

#: the authors' squash of ``2x - 1`` before atanh (keeps w finite at pixels 0 and 1)
SQUASH = 0.999999
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults (the authors': TF's AdamOptimizer, same values)


def _adam(p: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, lr: float) -> Tensor:
    """One ``torch.optim.Adam`` step (its single-tensor arithmetic) on ``p`` with gradient ``g``;
    ``m``, ``v`` are updated in place; returns the new ``p``."""
    b1, b2 = BETAS
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(ADAM_EPS)
    return p.addcdiv(m, denom, value=-lr / (1 - b1 ** t))


def cw_l2(objective: LogitsObjective, x: Tensor, y: Tensor, *, steps: int, binary_search_steps: int,
          initial_const: float, lr: float, kappa: float, abort_early: bool) -> tuple[Tensor, Tensor]:
    """The authors' L2 attack (module docstring): ``(best x', its L2 norm)`` per row, ``inf`` (and
    ``x``) where no iterate was misclassified."""
    x = x.detach()
    n = len(x)
    view = (-1, *([1] * (x.dim() - 1)))
    w = torch.atanh((2 * x - 1) * SQUASH)
    const = torch.full((n,), float(initial_const), device=x.device, dtype=x.dtype)
    lower, upper = torch.zeros_like(const), torch.full_like(const, 1e10)
    best_l2, best = torch.full_like(const, float("inf")), x.clone()
    every = max(steps // 10, 1)
    for outer in range(binary_search_steps):
        if binary_search_steps >= 10 and outer == binary_search_steps - 1:
            const = upper.clone()
        mod, m, v = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        prev = torch.full_like(const, 1e6)
        rows = torch.arange(n, device=x.device)
        for it in range(steps):
            if rows.numel() == 0:
                break
            with torch.enable_grad():
                md = mod[rows].requires_grad_(True)
                adv = (torch.tanh(w[rows] + md) + 1) / 2
                l2sq = (adv - x[rows]).pow(2).flatten(1).sum(1)
                logits = objective(adv)
                loss = l2sq + const[rows] * torch.clamp(margin(logits, y[rows]) + kappa, min=0)
                (g,) = torch.autograd.grad(loss.sum(), md)
            mr, vr = m[rows], v[rows]  # copies (advanced indexing), updated by _adam, written back
            mod[rows] = _adam(md.detach(), g, mr, vr, it + 1, lr)
            m[rows], v[rows] = mr, vr
            loss, adv, logits = loss.detach(), adv.detach(), logits.detach()
            if abort_early and it % every == 0:  # before recording, as the authors'
                stop = loss > prev[rows] * 0.9999
                prev[rows] = loss
                keep = ~stop
                rows, loss, adv, logits, l2sq = rows[keep], loss[keep], adv[keep], logits[keep], l2sq[keep]
            scores = logits.scatter_add(1, y[rows].view(-1, 1), torch.full_like(logits[:, :1], kappa))
            fooled = scores.argmax(1) != y[rows]
            success[rows] |= fooled
            l2 = lp_norms(adv - x[rows], "l2")
            better = fooled & (l2 < best_l2[rows])
            best_l2[rows[better]], best[rows[better]] = l2[better], adv[better]
        upper = torch.where(success, torch.minimum(upper, const), upper)
        lower = torch.where(success, lower, torch.maximum(lower, const))
        const = torch.where(upper < 1e9, (lower + upper) / 2, torch.where(success, const, const * 10))
    return best, best_l2


class CWL2(MinNormAttack):
    """Carlini-Wagner L2 with binary search over c (S&P 2017; the authors' l2_attack.py): a minimum-norm attack."""

    name = "cw-l2"
    norms = ("l2",)
    norm = "l2"

    @dataclass(frozen=True)
    class Params:
        steps: int = 1000  # Adam iterations per binary-search step (authors: 10000; see the module docstring)
        binary_search_steps: int = 9  # the authors'
        initial_const: float = 1e-3  # the authors' (torchattacks: c = 1, no search)
        lr: float = 1e-2  # Adam's learning rate (the authors')
        kappa: float = 0.0  # confidence (the authors')
        abort_early: bool = True  # per sample (see the module docstring)
        eps_grid: tuple[float, ...] | None = None  # accuracy@e for these e; None: 0.25, 0.5, 1, 2 x eps

    def __init__(self, params: "CWL2.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 1 or p.binary_search_steps < 1 or not p.initial_const > 0 or not p.lr > 0 or not p.kappa >= 0:
            raise ConfigError(f"attack '{self.name}' needs steps >= 1, binary_search_steps >= 1, initial_const > 0, "
                              f"lr > 0 and kappa >= 0; got {p}")

    def search(self, objective, x, y, generator):
        p = self.params
        return cw_l2(objective, x, y, steps=p.steps, binary_search_steps=p.binary_search_steps,
                     initial_const=p.initial_const, lr=p.lr, kappa=p.kappa, abort_early=p.abort_early)
