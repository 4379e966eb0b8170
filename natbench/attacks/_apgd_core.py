"""One APGD run (Croce & Hein, ICML 2020, Sec. 3, Algorithm 1) and the losses it maximises.

Implemented after the authors' code ``fra31/auto-attack @ a392200 : autoattack/autopgd_base.py``
(``APGDAttack.attack_single_run``; notes Sec. 8.1). Restarts, the targeted cascade and the attack
classes built on it are in :mod:`natbench.attacks.apgd`; the L2 and L1 starts, steps, projection and
L1's sparsity-adaptive checkpoints in :mod:`natbench.attacks._apgd_norms` (``norm="l2"``/``"l1"``; the
schedule below is L-inf's and L2's). What one L-inf run does, as the original:

- start ``x0 = clamp(x + eps * t / (||t||_inf + 1e-12), 0, 1)``, ``t ~ U(-1, 1)`` per pixel (so every
  sample starts on the surface of the eps-ball);
- step size ``eta = 2 eps`` per sample; momentum ``a = 0.75`` (``a = 1`` at the first step)::

      z       = P(x_k + eta * sign(g_k))
      x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))

  with ``P`` the clamp to the eps-ball and then [0, 1], ``g_k`` the gradient of the summed
  per-sample loss (averaged over ``eot_iter`` forward/backward passes: EOT);
- checkpoints: the first after ``int(0.22 N)`` steps, then intervals shrinking by ``int(0.03 N)`` down
  to ``int(0.06 N)`` (each at least 1): at N = 100 after 22, 41, 57, 70, 80, 87, 93, 99 steps
  (:func:`checkpoints`). At a checkpoint that closes an interval of ``k`` steps, a sample halves its
  step and restarts from its best point (and that point's gradient) when (a) its loss went up in at
  most ``rho * k`` of the last ``k`` steps, or (b) its step was not halved at the previous checkpoint
  and its best loss has not improved since. The oscillation count reads the loss history exactly as
  the original: at the first checkpoint the oldest comparison is against the (still zero) last row
  of the history, a quirk kept on purpose (:func:`oscillation_count`);
- success tracking: a sample is fooled once an iterate is misclassified; ``x_best_adv`` is the
  *latest* misclassified iterate (the original overwrites it at every misclassified step).

Losses (per sample, to maximise, from logits ``z``; ``pi`` sorts ``z`` in decreasing order):

- ``ce``: ``CE(z, y)``;
- ``dlr``: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` (paper Eq. 6);
- ``dlr-targeted``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (paper Eq. 7); APGD-T
  targets the 2nd .. (n_target_classes + 1)-th highest logits of the clean point, one run per target,
  each on the points still robust.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from natbench.attacks._apgd_norms import L1Sparsity, alpha, draw_noise, draw_start, l1_step, l2_step
from natbench.errors import ConfigError

#: ``(logits, y) -> per-sample loss (B,)`` to maximise.
LossFn = Callable[[Tensor, Tensor], Tensor]
Forward = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- schedule and losses


def schedule(n_iter: int) -> tuple[int, int, int]:
    """``(first interval, minimum interval, decrement)`` = ``int(0.22 N), int(0.06 N), int(0.03 N)``, each >= 1."""
    return max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)


def checkpoints(n_iter: int) -> list[int]:
    """The numbers of steps after which the step size is checked (N = 100: 22, 41, 57, ..., 99)."""
    first, minimum, decr = schedule(n_iter)
    out, k, done = [], first, 0
    while done + k <= n_iter:
        done += k
        out.append(done)
        k = max(k - decr, minimum)
    return out


def oscillation_count(loss_steps: Tensor, i: int, k: int) -> Tensor:
    """Per sample: how many of the last ``k`` steps (ending at row ``i``) increased the loss.

    ``loss_steps[j]`` is the loss after step ``j`` (0-based). Row ``i - c - 1`` is indexed as Python
    does: ``-1`` is the last row of the history (zeros until the final step), as in the original.
    """
    t = torch.zeros(loss_steps.shape[1], device=loss_steps.device)
    for c in range(k):
        t += (loss_steps[i - c] > loss_steps[i - c - 1]).float()
    return t


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy ``CE(z, y)``."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted DLR: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` (Croce & Hein 2020, Eq. 6).

    ``max_{i != y}`` is the second-highest logit when ``y`` is the top-1 class (by ``sort``), else the highest.
    """
    if logits.shape[1] < 3:
        raise ConfigError(f"DLR loss needs at least 3 classes, got {logits.shape[1]}")
    z_sorted, ind_sorted = logits.sort(dim=1)
    top_is_y = (ind_sorted[:, -1] == y).to(logits.dtype)
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = z_sorted[:, -2] * top_is_y + z_sorted[:, -1] * (1.0 - top_is_y)
    return -(z_y - other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_loss_targeted(logits: Tensor, y: Tensor, y_target: Tensor) -> Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (Croce & Hein 2020, Eq. 7)."""
    if logits.shape[1] < 4:
        raise ConfigError(f"targeted DLR loss needs at least 4 classes, got {logits.shape[1]}")
    z_sorted = logits.sort(dim=1)[0]
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    z_t = logits.gather(1, y_target.view(-1, 1)).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def target_classes(logits: Tensor, target_rank: int) -> Tensor:
    """The class with the ``target_rank``-th highest logit (2 = runner-up), as ``sort()[1][:, -rank]``."""
    return logits.sort(dim=1)[1][:, -target_rank]


# --------------------------------------------------------------------------- one run


def _draw_start(x: Tensor, eps: float, generator: torch.Generator | None, norm: str = "linf") -> Tensor:
    """The random start of ``norm`` (L-inf: ``clamp(x + eps * t / (||t||_inf + 1e-12), 0, 1)`` with
    ``t = 2 U[0,1) - 1`` drawn from ``generator``; L2/L1: :func:`natbench.attacks._apgd_norms.draw_start`)."""
    return draw_start(x, eps, norm, generator)


#: ``x -> (per-sample loss, logits)`` in one pass, for objectives that are not a function of the
#: logits alone (an adaptive attack's defense objective also runs NAT's adversary model).
Joint = Callable[[Tensor], tuple[Tensor, Tensor]]


def _loss_grad(forward: Forward | None, loss_fn: LossFn | None, x_adv: Tensor, y: Tensor, eot_iter: int,
               joint: Joint | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, per-sample loss) of the last EOT pass and the gradient averaged over ``eot_iter`` passes
    (``joint`` replaces ``loss_fn(forward(x), y)`` when given)."""
    grad = torch.zeros_like(x_adv)
    with torch.enable_grad():
        for _ in range(eot_iter):
            xa = x_adv.detach().requires_grad_(True)
            if joint is not None:
                loss_indiv, logits = joint(xa)
            else:
                logits = forward(xa)
                loss_indiv = loss_fn(logits, y)
            (g,) = torch.autograd.grad(loss_indiv.sum(), xa)
            grad += g.detach()
    return logits.detach(), loss_indiv.detach(), grad / float(eot_iter)


def apgd_single_run(forward: Forward | None, x: Tensor, y: Tensor, loss_fn: LossFn | None, *, eps: float, n_iter: int,
                    rho: float = 0.75, eot_iter: int = 1, generator: torch.Generator | None = None,
                    joint: Joint | None = None, y_target: Tensor | None = None,
                    early_stop: bool = False, start: Tensor | None = None,
                    group: Tensor | None = None, norm: str = "linf",
                    x_init: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One APGD run from a random start: ``(x_best, robust, loss_best, x_best_adv)`` as the original's
    ``attack_single_run``: the highest-loss point, per-sample "never misclassified" flags, its loss,
    and the latest misclassified iterate (the start where never misclassified).

    ``joint`` (``(x, rows) -> (loss, logits)`` of rows ``rows`` of the batch) replaces
    ``forward``/``loss_fn`` for objectives that are not a function of the logits alone; ``y_target``
    (per row) makes the loss ``dlr_loss_targeted(logits, y, y_target)``. The schedule is unchanged.

    ``early_stop``: a row leaves the batch at the first misclassified iterate and is not computed on
    again. The "never misclassified" flags are the same (a row's trajectory does not depend on the
    other rows: the model is evaluated, not trained, and nothing is drawn after the start); for a
    fooled row ``x_best_adv`` is then the *first* misclassified iterate, not the latest, and
    ``x_best``/``loss_best`` are as of that step.

    ``norm``: ``"linf"``, ``"l2"`` or ``"l1"`` (start, step, step size and, for L1, the checkpoints of
    :mod:`natbench.attacks._apgd_norms`). ``x_init``: the original's ``x_init`` (``use_largereps``'
    stages): the run starts from it, the random start is still drawn (and discarded) as the original
    draws it, and L1's initial ``topk`` is the start's sparsity.

    ``start`` replaces the random start (nothing is drawn then). ``group`` (stacked targets, with
    ``early_stop``): rows of one group are the targets of one image in cascade order; when a row is
    fooled, the group's later rows leave too, unfooled (they can no longer be the first target that
    fools the image).
    """
    b = x.shape[0]
    view = (-1, *([1] * (x.dim() - 1)))
    n_first, n_min, size_decr = schedule(n_iter)

    def loss_grad(xa: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if joint is not None:
            return _loss_grad(None, None, xa, None, eot_iter, lambda z: joint(z, rows))
        yy = y[rows]
        fn = loss_fn if y_target is None else (lambda z, t: dlr_loss_targeted(z, t, y_target[rows]))
        return _loss_grad(forward, fn, xa, yy, eot_iter)

    if start is not None:
        x_adv = start.clone()
    elif x_init is not None:
        draw_noise(x, norm, generator)  # the original draws its start before replacing it with x_init
        x_adv = torch.clamp(x_init.clone(), 0.0, 1.0)
    else:
        x_adv = draw_start(x, eps, norm, generator)
    sparsity = L1Sparsity(x, x_adv, from_init=x_init is not None) if norm == "l1" else None
    out_best, out_best_adv = x_adv.clone(), x_adv.clone()
    out_acc = torch.ones(b, dtype=torch.bool, device=x.device)
    rows = torch.arange(b, device=x.device)  # the rows still in the batch
    x0, yy = x, y
    x_best = x_adv.clone()
    loss_steps = torch.zeros(n_iter, b, device=x.device)

    logits, loss_indiv, grad = loss_grad(x_adv, rows)
    grad_best = grad.clone()
    acc = logits.max(1)[1] == yy
    loss_best = loss_indiv.clone()
    out_loss = loss_best.clone()

    step_size = torch.full((b,), alpha(norm) * eps, device=x.device, dtype=x.dtype).view(view)
    x_adv_old = x_adv.clone()
    k = n_first if sparsity is None else L1Sparsity.interval(n_iter)
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones(b, dtype=torch.bool, device=x.device)
    lo, hi = x0 - eps, x0 + eps

    def leave(gone: Tensor, adv: Tensor) -> None:  # record the rows that leave (fooled at ``adv``), drop their state
        nonlocal rows, x0, yy, lo, hi, x_adv, x_adv_old, x_best, grad, grad_best, loss_best, loss_steps
        nonlocal step_size, loss_best_last_check, reduced_last_check, acc
        r = rows[gone]
        out_acc[r] = False
        out_best_adv[r] = adv
        out_best[r] = x_best[gone]
        out_loss[r] = loss_best[gone]
        if group is not None:  # the later targets of the fooled images leave unfooled
            first = torch.full((int(group.max()) + 1,), b, device=x.device, dtype=torch.long)
            first.scatter_reduce_(0, group[r], r, "amin")
            later = rows > first[group[rows]]
            if bool(later.any()):
                out_acc[rows[later]] = acc[later]
                out_best_adv[rows[later]] = x_adv[later]
                out_best[rows[later]] = x_best[later]
                out_loss[rows[later]] = loss_best[later]
            gone = gone | later
        keep = ~gone
        rows, x0, yy, lo, hi = rows[keep], x0[keep], yy[keep], lo[keep], hi[keep]
        x_adv, x_adv_old, x_best, grad, grad_best = x_adv[keep], x_adv_old[keep], x_best[keep], grad[keep], grad_best[keep]
        loss_best, loss_steps, step_size = loss_best[keep], loss_steps[:, keep], step_size[keep]
        loss_best_last_check, reduced_last_check, acc = loss_best_last_check[keep], reduced_last_check[keep], acc[keep]
        if sparsity is not None:
            sparsity.keep(keep)

    if early_stop and not bool(acc.all()):
        leave(~acc, x_adv[~acc])

    for i in range(n_iter):
        if rows.numel() == 0:
            break
        # ---- step with momentum
        momentum = x_adv - x_adv_old
        x_adv_old = x_adv.clone()
        a = 0.75 if i > 0 else 1.0
        if norm == "linf":
            z = torch.clamp(torch.min(torch.max(x_adv + step_size * torch.sign(grad), lo), hi), 0.0, 1.0)
            x_adv = torch.clamp(torch.min(torch.max(x_adv + (z - x_adv) * a + momentum * (1 - a), lo), hi), 0.0, 1.0)
        elif norm == "l2":
            x_adv = l2_step(x0, x_adv, momentum, grad, step_size, eps, a)
        else:
            x_adv = l1_step(x0, x_adv, grad, step_size, sparsity.topk, eps)

        # ---- gradient, success tracking
        logits, loss_indiv, grad = loss_grad(x_adv, rows)
        pred = logits.max(1)[1] == yy
        acc = acc & pred
        wrong = ~pred
        if not early_stop:
            out_best_adv[wrong] = x_adv[wrong]

        # ---- best point
        loss_steps[i] = loss_indiv
        better = loss_indiv > loss_best
        x_best[better] = x_adv[better]
        grad_best[better] = grad[better]
        loss_best[better] = loss_indiv[better]
        gone = wrong if early_stop and bool(wrong.any()) else None
        gone_adv = x_adv[gone].clone() if gone is not None else None  # before the checkpoint below moves x_adv

        # ---- step-size checkpoint
        counter3 += 1
        if counter3 == k and sparsity is not None:  # L1: the sparsity-adaptive step (interval fixed)
            fell = sparsity.checkpoint(x0, x_best, step_size, eps)
            x_adv[fell] = x_best[fell]
            grad[fell] = grad_best[fell]
            counter3 = 0
        elif counter3 == k:
            osc = oscillation_count(loss_steps, i, k) <= k * rho
            no_impr = ~reduced_last_check & (loss_best_last_check >= loss_best)
            reduce = osc | no_impr
            reduced_last_check = reduce.clone()
            loss_best_last_check = loss_best.clone()
            if reduce.any():
                step_size[reduce] /= 2.0
                x_adv[reduce] = x_best[reduce]
                grad[reduce] = grad_best[reduce]
            k = max(k - size_decr, n_min)
            counter3 = 0
        if gone is not None:
            leave(gone, gone_adv)

    out_acc[rows] = acc
    out_best[rows] = x_best
    out_loss[rows] = loss_best
    return out_best, out_acc, out_loss, out_best_adv

