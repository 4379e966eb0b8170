"""FAB-T: the targeted Fast Adaptive Boundary attack in L-inf, L2 or L1, as AutoAttack runs it.

Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack",
ICML 2020 (Sec. 3, Alg. 1; the targeted version of "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020). Implemented after
``fra31/auto-attack @ a392200 : autoattack/fab_base.py, fab_pt.py, fab_projections.py``
(``FABAttack_PT``, ``targeted=True``, ``norm='Linf'/'L2'/'L1'``) with AutoAttack's
``version='standard'`` settings (the same for every norm):
``n_target_classes=9, n_iter=100, n_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9``.

The norm is the threat model's (``self.norm``, bound by ``_base.with_norm``); ``|.|`` below is that
norm, computed as the original does (:func:`fab_dist`). For target rank k = 2, ...,
n_target_classes + 1 (target ``t`` = the class with the k-th largest clean logit) and every
restart, on the images still robust (clean-correct and not yet fooled):

- f(x') = z_t(x') - z_y(x') and its input gradient g (``torch.autograd`` on the logits objective;
  the original's ``get_diff_logits_grads_batch_targeted``). The linearised boundary at the iterate
  x1 is the hyperplane ``{z : g.z = g.x1 - f(x1)}``;
- d1, d2: the minimal steps in the norm from x1 and from the clean x0 onto that hyperplane inside
  the box [0, 1]^d (Croce & Hein's Prop. 3.1: :func:`project_linf_hyperplane`, solved by sorting;
  ``_fab_proj.project_l2_hyperplane`` / ``project_l1_hyperplane``, the original's projections);
- ``alpha = clamp(|d1| / (|d1| + |d2|), 0, alpha_max)`` (norms floored at 1e-8);
  ``x1 <- clamp((1 - alpha)(x1 + eta d1) + alpha (x0 + eta d2), 0, 1)``;
- if x1 is misclassified (any class != y): keep it when ``|x1 - x0|`` is the smallest so far,
  then step back towards x0: ``x1 <- x0 + beta (x1 - x0)``.

The first restart starts at x0; restart r > 0 at ``x0 + (eps/2) u / |u|``, ``u ~ U(-1, 1)`` (L-inf)
or ``u ~ N(0, 1)`` (L2, L1) drawn from ``generator``, clamped to [0, 1]. With the standard single
restart FAB-T is deterministic. Final check (as the original): the minimal point found counts, and
is returned, only if it is misclassified and ``|x_adv - x| <= eps``; every other image is returned
unchanged. ``n_target_classes`` is capped at ``num_classes - 1``.

Objective kind ``"logits"``: the objective is called on sub-batches of rows (the still-robust
ones), as the original calls the model. Threat model: ``||x_adv - x||_p <= eps``, [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from natbench.attacks._base import NORMS, LinfAttack, check_eps
from natbench.attacks._clean import clean_logits
from natbench.attacks._fab_proj import project_l1_hyperplane, project_l2_hyperplane
from natbench.errors import ConfigError


def project_linf_hyperplane(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Row-wise minimal L-inf step ``d`` with ``w.(t + d) = b`` and ``t + d`` in [0, 1]^n.

    ``t``, ``w``: (N, n), ``t`` in the box; ``b``: (N,). Orient the hyperplane so that
    ``c = w.t - b >= 0``; the cheapest way to lower ``w.z`` by ``c`` moves every coordinate with
    ``w_i > 0`` down and every one with ``w_i < 0`` up by ``min(lam, r_i)``, where ``r_i`` is the room
    to the box face in that direction. ``g(lam) = sum_i |w_i| min(lam, r_i)`` is piecewise linear
    and nondecreasing; with the rooms sorted, ``g`` at breakpoint k is
    ``sum_{j<k} |w_j| r_j + r_k sum_{j>=k} |w_j|``, so the solution of ``g(lam) = c`` lies in the first
    segment whose end reaches ``c``. When the box does not reach the hyperplane (``c`` above the
    total room) every coordinate moves to its face (the original's behaviour). Coordinates with
    ``w_i = 0`` never move.
    """
    c = (w * t).sum(1) - b
    flip = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
    w = w * flip.unsqueeze(1)
    c = c * flip
    up = w < 0
    room = torch.where(up, 1 - t, t)
    aw = w.abs()
    room_s, order = room.sort(dim=1)
    aw_s = aw.gather(1, order)
    done = torch.cumsum(aw_s * room_s, dim=1) - aw_s * room_s  # sum_{j<k} |w_j| r_j
    tail = torch.flip(torch.cumsum(torch.flip(aw_s, (1,)), dim=1), (1,))  # sum_{j>=k} |w_j|
    g = done + room_s * tail
    k = (g < c.unsqueeze(1)).sum(1)
    n = w.shape[1]
    feasible = k < n
    kk = k.clamp(max=n - 1).unsqueeze(1)
    lam = (c - done.gather(1, kk).squeeze(1)) / tail.gather(1, kk).squeeze(1).clamp_min(1e-30)
    lam = torch.where(feasible, lam.clamp_min(0), torch.full_like(lam, float("inf")))
    step = torch.minimum(lam.unsqueeze(1), room)
    return torch.where(up, step, -step) * (w != 0).to(w.dtype)


def _linf(d: Tensor) -> Tensor:
    return d.flatten(1).abs().amax(dim=1)


def fab_dist(d: Tensor, norm: str) -> Tensor:
    """Per-row ``||d||_p`` in ``norm``, computed as the original does (L2: ``sqrt(sum d^2)``)."""
    if norm == "linf":
        return _linf(d)
    if norm == "l2":
        return (d.flatten(1) ** 2).sum(dim=1).sqrt()
    if norm == "l1":
        return d.flatten(1).abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}; one of {', '.join(NORMS)}")


#: the hyperplane-box projection of each norm
PROJECTIONS = {"linf": project_linf_hyperplane, "l2": project_l2_hyperplane, "l1": project_l1_hyperplane}


def _view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def diff_logits_grad(objective, x: Tensor, y: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``f = z_target - z_y`` at ``x`` (B,) and its gradient w.r.t. ``x`` (input only)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        z = objective(xr)
        rows = torch.arange(x.shape[0], device=x.device)
        f = z[rows, target] - z[rows, y]
        (g,) = torch.autograd.grad(f.sum(), xr)
    return f.detach(), g.detach()


def fab_random_start(x0: Tensor, eps: float, generator: torch.Generator | None = None, norm: str = "linf") -> Tensor:
    """The start of restarts r > 0: ``clamp(x0 + (eps / 2) u / |u|_p, 0, 1)`` per pixel from
    ``generator`` (on its own device; the global RNG of ``x0``'s device when None), with the original's
    draw per norm: ``u ~ U(-1, 1)`` for L-inf, ``u ~ N(0, 1)`` for L2 and L1."""
    dev = x0.device if generator is None else generator.device
    if norm == "linf":
        u = (2 * torch.rand(x0.shape, generator=generator, device=dev) - 1).to(x0.device, x0.dtype)
        return (x0 + eps * u / _view(_linf(u), u) * 0.5).clamp(0.0, 1.0)
    u = torch.randn(x0.shape, generator=generator, device=dev).to(x0.device, x0.dtype)
    if norm == "l2":
        return (x0 + eps * u / _view(fab_dist(u, "l2"), u) * 0.5).clamp(0.0, 1.0)
    return (x0 + eps * u / _view(fab_dist(u, norm), u) / 2).clamp(0.0, 1.0)


def fab_targeted_single_run(
    objective, x0: Tensor, y: Tensor, target: Tensor, *, n_iter: int, alpha_max: float, eta: float,
    beta: float, start: Tensor | None = None, stop_at: float | None = None, group: Tensor | None = None,
    norm: str = "linf",
) -> tuple[Tensor, Tensor]:
    """One targeted FAB run in ``norm``: ``(adv, dist)``, the misclassified point of smallest
    distance (:func:`fab_dist`) found per image (``dist = inf`` and ``adv = x0`` where none was found).

    ``stop_at`` (early stop; AutoAttack passes its eps): a row leaves the batch as soon as it has a
    misclassified point within ``stop_at``. Whether it ends fooled (misclassified within eps) is
    then decided, and only its ``adv``/``dist`` differ: the first such point, not the smallest found
    in all ``n_iter`` iterations. ``group`` (stacked targets, with ``stop_at``): rows of the same
    group are the targets of one image in cascade order; once a row leaves, the group's later rows
    leave too (they can no longer be the first target that fools the image). The objective is only
    evaluated on the rows still in the batch (rows are independent: the model is evaluated, not trained).
    """
    bs = x0.shape[0]
    project = PROJECTIONS[norm]
    adv_out = x0.clone()
    dist_out = torch.full((bs,), float("inf"), device=x0.device, dtype=x0.dtype)
    rows = torch.arange(bs, device=x0.device)
    xs, ys, ts = x0, y, target
    x1 = x0.clone() if start is None else start.clone()
    adv = x0.clone()
    dist = dist_out.clone()
    for _ in range(n_iter):
        if rows.numel() == 0:
            break
        f, g = diff_logits_grad(objective, x1, ys, ts)
        w = g.flatten(1)
        b = (w * x1.flatten(1)).sum(1) - f
        n = xs.shape[0]
        d = project(torch.cat((x1.flatten(1), xs.flatten(1))), torch.cat((w, w)), torch.cat((b, b)))
        a = fab_dist(d, norm).clamp_min(1e-8)
        a1, a2 = a[:n], a[n:]
        alpha = _view((a1 / (a1 + a2)).clamp(0.0, alpha_max), xs)
        d1, d2 = d[:n].view_as(xs), d[n:].view_as(xs)
        x1 = ((x1 + eta * d1) * (1 - alpha) + (xs + eta * d2) * alpha).clamp(0.0, 1.0)
        with torch.no_grad():
            is_adv = objective(x1).argmax(1) != ys
        if bool(is_adv.any()):
            t = fab_dist(x1 - xs, norm)
            better = is_adv & (t < dist)
            adv = torch.where(_view(better, xs), x1, adv)
            dist = torch.where(better, t, dist)
            x1 = torch.where(_view(is_adv, xs), xs + (x1 - xs) * beta, x1)
            if stop_at is not None:
                gone = dist <= stop_at
                if group is not None and bool(gone.any()):
                    g_rows = group[rows]
                    first = torch.full((int(group.max()) + 1,), bs, device=x0.device, dtype=torch.long)
                    first.scatter_reduce_(0, g_rows[gone], rows[gone], "amin")
                    gone = gone | (rows > first[g_rows])
                if bool(gone.any()):
                    r = rows[gone]
                    adv_out[r], dist_out[r] = adv[gone], dist[gone]
                    keep = ~gone
                    rows, xs, ys, ts, x1, adv, dist = rows[keep], xs[keep], ys[keep], ts[keep], x1[keep], adv[keep], dist[keep]
    adv_out[rows], dist_out[rows] = adv, dist
    return adv_out, dist_out


class FABT(LinfAttack):
    """Targeted FAB (Croce & Hein, ICML 2020) in L-inf, L2 or L1, AutoAttack's standard FAB-T settings."""

    name = "fab-t"
    objective_kind = "logits"
    norms = NORMS

    @dataclass(frozen=True)
    class Params:
        n_target_classes: int = 9  # targets: the classes with the 2nd..(n+1)-th largest clean logit
        n_iter: int = 100  # iterations per target and restart
        restarts: int = 1  # per target; restart r > 0 starts at a random point at distance eps/2
        alpha_max: float = 0.1  # cap of the step's bias towards the clean image
        eta: float = 1.05  # overshoot of the projection step
        beta: float = 0.9  # backward step towards the clean image after a success
        early_stop: bool = True  # an image leaves once fooled within eps (same flags; x' = first such point)
        stack_targets: str = "auto"  # all targets as one stacked batch: on, off, auto (= on CUDA; restarts 1 only)

    def __init__(self, params: "FABT.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.n_target_classes < 1 or p.n_iter < 0 or p.restarts < 1 or not (0 <= p.alpha_max <= 1):
            raise ConfigError(
                f"attack '{self.name}' needs n_target_classes >= 1, n_iter >= 0, restarts >= 1, "
                f"0 <= alpha_max <= 1; got {p}."
            )
        if p.stack_targets not in ("auto", "on", "off"):
            raise ConfigError(f"attack '{self.name}': stack_targets must be auto, on or off, got {p.stack_targets!r}.")

    def __call__(self, objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        p, norm = self.params, self.norm
        x = x.detach()
        y = objective.y.to(x.device).long()
        out = x.clone()
        clean = clean_logits(objective, x)  # the carried ones when given (AutoAttack's)
        robust = clean.argmax(1) == y  # only clean-correct images are attacked
        num_classes = int(getattr(objective, "num_classes", clean.shape[1]))
        ranking = clean.sort(dim=1)[1]  # ascending: the k-th largest logit is column -k
        ranks = list(range(2, min(p.n_target_classes, num_classes - 1) + 2))
        stop_at = eps if p.early_stop else None
        stack = p.stack_targets == "on" or (p.stack_targets == "auto" and x.device.type == "cuda")
        if stack and p.restarts == 1:
            return self._stacked(objective, x, y, out, robust, ranking, ranks, eps, stop_at, norm)
        for k in ranks:
            for r in range(p.restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    return out
                x0, y0, t0 = x[idx], y[idx], ranking[idx, -k]
                start = fab_random_start(x0, eps, generator, norm) if r > 0 else None
                adv, dist = fab_targeted_single_run(
                    objective, x0, y0, t0, n_iter=p.n_iter, alpha_max=p.alpha_max, eta=p.eta, beta=p.beta,
                    start=start, stop_at=stop_at, norm=norm,
                )
                cand = (dist <= eps).nonzero().flatten()  # only these can be fooled; the rest is not re-evaluated
                with torch.no_grad():
                    ok = (objective(adv[cand]).argmax(1) != y0[cand]) & (fab_dist(x0[cand] - adv[cand], norm) <= eps)
                fooled = cand[ok]
                out[idx[fooled]] = adv[fooled]
                robust[idx[fooled]] = False
        return out

    def _stacked(self, objective, x, y, out, robust, ranking, ranks, eps, stop_at, norm) -> Tensor:
        """Every target of every still-robust image in one batch (target-major rows): per image the
        result of the sequential cascade, i.e. of the first target (in rank order) that fools it.
        Exact: with one restart FAB-T draws nothing, and the rows are independent."""
        p = self.params
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            return out
        n, m = idx.numel(), len(ranks)
        x0 = x[idx].repeat(m, *([1] * (x.dim() - 1)))
        y0 = y[idx].repeat(m)
        t0 = torch.cat([ranking[idx, -k] for k in ranks])
        group = torch.arange(n, device=x.device).repeat(m)
        adv, dist = fab_targeted_single_run(objective, x0, y0, t0, n_iter=p.n_iter, alpha_max=p.alpha_max, eta=p.eta,
                                            beta=p.beta, stop_at=stop_at, group=group if stop_at is not None else None,
                                            norm=norm)
        cand = (dist <= eps).nonzero().flatten()
        with torch.no_grad():
            ok = (objective(adv[cand]).argmax(1) != y0[cand]) & (fab_dist(x0[cand] - adv[cand], norm) <= eps)
        first = torch.full((n,), m * n, device=x.device, dtype=torch.long)
        first.scatter_reduce_(0, group[cand[ok]], cand[ok], "amin")  # the earliest target's row per image
        hit = first < m * n
        out[idx[hit]] = adv[first[hit]]
        return out
