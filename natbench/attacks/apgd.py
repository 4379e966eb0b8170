"""APGD: Auto-PGD, the step-size-free PGD of AutoAttack (L-inf), on CE, DLR and targeted DLR.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Sec. 3 (Algorithm 1) and Sec. 4 (DLR loss). Implemented after
the authors' code ``fra31/auto-attack @ a392200 : autoattack/autopgd_base.py`` (``APGDAttack`` and
``APGDAttack_targeted``, L-inf branch; notes Sec. 8.1). What each run does, as the original:

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

``perturb`` (``best_loss=False``, the only mode AutoAttack uses): only the points the model
classifies correctly are attacked; each restart (each target class, for APGD-T) attacks only the
points still robust; the result is the adversarial example where the attack succeeded and the
**clean input** elsewhere, exactly what the original returns.

Losses (per sample, to maximise, from logits ``z``; ``pi`` sorts ``z`` in decreasing order):

- ``ce``: ``CE(z, y)``;
- ``dlr``: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` (paper Eq. 6);
- ``dlr-targeted``: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (paper Eq. 7); APGD-T
  targets the 2nd .. (n_target_classes + 1)-th highest logits of the clean point, one run per target,
  each on the points still robust.

Randomness. The original reseeds the global RNG with its ``seed`` at the start of ``perturb`` and
then draws the starts of all restarts (targets) in order. Here every draw comes, in the same order
and with the same shapes, from the ``generator`` argument (``None``: the global RNG of its device,
as :func:`natbench.attacks._base.uniform_start`): a generator freshly seeded with ``s`` reproduces
the original's ``seed = s`` semantics (:class:`natbench.attacks.autoattack.AutoAttack` does that).

Objective kind ``"logits"``: a :class:`natbench.contracts.LogitsObjective` (``x' -> logits`` with
``.y``, ``.num_classes``). The attack evaluates it on subsets of the batch's rows (the points still
robust), as the original evaluates the model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.errors import ConfigError

log = logging.getLogger(__name__)

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


def _draw_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """``clamp(x + eps * t / (||t||_inf + 1e-12), 0, 1)`` with ``t = 2 U[0,1) - 1`` drawn from ``generator``."""
    device = x.device if generator is None else generator.device
    t = (2 * torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype) - 1).to(x.device)
    norm = t.abs().reshape(t.shape[0], -1).amax(1).view(-1, *([1] * (x.dim() - 1)))
    return torch.clamp(x + eps * t / (norm + 1e-12), 0.0, 1.0)


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
                    joint: Joint | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One APGD run from a random start: ``(x_best, robust, loss_best, x_best_adv)`` as the original's
    ``attack_single_run``: the highest-loss point, per-sample "never misclassified" flags, its loss,
    and the latest misclassified iterate (the start where never misclassified). ``joint`` (``x ->
    (loss, logits)``) replaces ``forward``/``loss_fn`` for objectives that are not a function of the
    logits alone; the schedule is unchanged."""
    b = x.shape[0]
    view = (-1, *([1] * (x.dim() - 1)))
    n_first, n_min, size_decr = schedule(n_iter)

    x_adv = _draw_start(x, eps, generator)
    x_best = x_adv.clone()
    x_best_adv = x_adv.clone()
    loss_steps = torch.zeros(n_iter, b, device=x.device)

    logits, loss_indiv, grad = _loss_grad(forward, loss_fn, x_adv, y, eot_iter, joint)
    grad_best = grad.clone()
    acc = logits.max(1)[1] == y
    loss_best = loss_indiv.clone()

    step_size = torch.full((b,), 2.0 * eps, device=x.device, dtype=x.dtype).view(view)
    x_adv_old = x_adv.clone()
    k = n_first
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones(b, dtype=torch.bool, device=x.device)
    lo, hi = x - eps, x + eps

    for i in range(n_iter):
        # ---- step with momentum
        momentum = x_adv - x_adv_old
        x_adv_old = x_adv.clone()
        a = 0.75 if i > 0 else 1.0
        z = torch.clamp(torch.min(torch.max(x_adv + step_size * torch.sign(grad), lo), hi), 0.0, 1.0)
        x_adv = torch.clamp(torch.min(torch.max(x_adv + (z - x_adv) * a + momentum * (1 - a), lo), hi), 0.0, 1.0)

        # ---- gradient, success tracking
        logits, loss_indiv, grad = _loss_grad(forward, loss_fn, x_adv, y, eot_iter, joint)
        pred = logits.max(1)[1] == y
        acc = acc & pred
        wrong = ~pred
        x_best_adv[wrong] = x_adv[wrong]

        # ---- best point
        loss_steps[i] = loss_indiv
        better = loss_indiv > loss_best
        x_best[better] = x_adv[better]
        grad_best[better] = grad[better]
        loss_best[better] = loss_indiv[better]

        # ---- step-size checkpoint
        counter3 += 1
        if counter3 == k:
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

    return x_best, acc, loss_best, x_best_adv


# --------------------------------------------------------------------------- perturb


def logits_parts(objective: Any, name: str) -> tuple[Forward, Tensor, int | None]:
    """The logits callable, labels and class count of a ``"logits"`` objective (ConfigError otherwise)."""
    y = getattr(objective, "y", None)
    if y is None or not callable(objective):
        raise ConfigError(
            f"attack '{name}' needs objective kind 'logits' (a LogitsObjective: x -> logits with .y), "
            f"got {type(objective).__name__}; drop the suite's 'objective:' override for it"
        )
    num_classes = getattr(objective, "num_classes", None)
    return objective, y, (None if num_classes is None else int(num_classes))


def _clean_correct(forward: Forward, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return forward(x).max(1)[1] == y


def apgd_perturb(forward: Forward, x: Tensor, y: Tensor, loss_fn: LossFn, *, eps: float, n_iter: int,
                 restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
                 generator: torch.Generator | None = None) -> Tensor:
    """The original ``APGDAttack.perturb(x, y)``: restarts on the still-robust, clean-correct points;
    the adversarial example where one succeeded, the clean input elsewhere."""
    x = x.detach()
    y = y.to(x.device).long()
    robust = _clean_correct(forward, x, y)
    adv = x.clone()
    for _ in range(restarts):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        _, acc_curr, _, adv_curr = apgd_single_run(
            forward, x[idx], y[idx], loss_fn, eps=eps, n_iter=n_iter, rho=rho, eot_iter=eot_iter, generator=generator
        )
        fooled = ~acc_curr
        robust[idx[fooled]] = False
        adv[idx[fooled]] = adv_curr[fooled]
    return adv


def apgd_targeted_perturb(forward: Forward, x: Tensor, y: Tensor, *, eps: float, n_iter: int,
                          n_target_classes: int = 9, restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
                          generator: torch.Generator | None = None) -> Tensor:
    """The original ``APGDAttack_targeted.perturb(x, y)``: for target ranks 2 .. n_target_classes + 1,
    targets from the clean logits of the points still robust, ``restarts`` runs each."""
    x = x.detach()
    y = y.to(x.device).long()
    robust = _clean_correct(forward, x, y)
    adv = x.clone()
    for rank in range(2, n_target_classes + 2):
        for _ in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            with torch.no_grad():
                y_target = target_classes(forward(x[idx]), rank)
            loss_fn = lambda z, yy, t=y_target: dlr_loss_targeted(z, yy, t)  # noqa: E731
            _, acc_curr, _, adv_curr = apgd_single_run(
                forward, x[idx], y[idx], loss_fn, eps=eps, n_iter=n_iter, rho=rho, eot_iter=eot_iter,
                generator=generator,
            )
            fooled = ~acc_curr
            robust[idx[fooled]] = False
            adv[idx[fooled]] = adv_curr[fooled]
    return adv


# --------------------------------------------------------------------------- attack classes


class APGDCE(LinfAttack):
    """APGD on cross-entropy (Croce & Hein, ICML 2020, Alg. 1), as ``fra31/auto-attack``'s ``APGDAttack(loss='ce')``.

    CE is computed from the logits objective, so the attack also sees which points it has fooled
    (for ``x_best_adv`` and for running restarts on the still-robust points only).
    """

    name = "apgd-ce"
    objective_kind = "logits"
    loss = "ce"

    @dataclass(frozen=True)
    class Params:
        steps: int = 100  # iterations per run (n_iter; AutoAttack standard: 100)
        restarts: int = 1  # random restarts, each on the points still robust (AutoAttack standard: 1)
        rho: float = 0.75  # halve the step when the loss rose in <= rho * k of the last k steps
        eot_iter: int = 1  # gradients averaged over this many passes (EOT; AutoAttack 'rand': 20)

    def __init__(self, params: "APGDCE.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 1 or p.restarts < 1 or p.eot_iter < 1 or not (0 < p.rho <= 1):
            raise ConfigError(f"attack '{self.name}' needs steps >= 1, restarts >= 1, eot_iter >= 1, 0 < rho <= 1; got {p}.")

    def _loss_fn(self) -> LossFn:
        return ce_loss

    def __call__(self, objective: Any, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        forward, y, num_classes = logits_parts(objective, self.name)
        if self.loss == "dlr" and num_classes is not None and num_classes < 3:
            raise ConfigError(f"attack '{self.name}': the DLR loss needs at least 3 classes, the task has {num_classes}")
        p = self.params
        return apgd_perturb(forward, x, y, self._loss_fn(), eps=eps, n_iter=p.steps, restarts=p.restarts,
                            rho=p.rho, eot_iter=p.eot_iter, generator=generator).detach()


class APGDDLR(APGDCE):
    """APGD on the untargeted DLR loss (Croce & Hein, ICML 2020, Eq. 6), as ``APGDAttack(loss='dlr')``."""

    name = "apgd-dlr"
    objective_kind = "logits"
    loss = "dlr"

    @dataclass(frozen=True)
    class Params(APGDCE.Params):
        steps: int = 100  # iterations per run (n_iter)
        restarts: int = 1  # random restarts, each on the points still robust (AutoAttack plus: 5)
        rho: float = 0.75  # halve the step when the loss rose in <= rho * k of the last k steps
        eot_iter: int = 1  # gradients averaged over this many passes (EOT; AutoAttack 'rand': 20)

    def _loss_fn(self) -> LossFn:
        return dlr_loss


class APGDT(APGDCE):
    """APGD-T: APGD on the targeted DLR loss (Croce & Hein, ICML 2020, Eq. 7), as ``APGDAttack_targeted``.

    One run (``restarts`` runs) per target: the classes of the 2nd .. (n_target_classes + 1)-th highest
    clean logits, each on the points still robust.
    """

    name = "apgd-t"
    objective_kind = "logits"
    loss = "dlr-targeted"

    @dataclass(frozen=True)
    class Params(APGDCE.Params):
        steps: int = 100  # iterations per run (n_iter)
        restarts: int = 1  # runs per target class (AutoAttack standard: 1)
        rho: float = 0.75  # halve the step when the loss rose in <= rho * k of the last k steps
        eot_iter: int = 1  # gradients averaged over this many passes (EOT)
        n_target_classes: int = 9  # targets: the 2nd .. (n+1)-th highest clean logits (AutoAttack: 9)

    def __init__(self, params: "APGDT.Params | None" = None) -> None:
        super().__init__(params)
        if self.params.n_target_classes < 1:
            raise ConfigError(f"attack '{self.name}' needs n_target_classes >= 1; got {self.params}.")

    def __call__(self, objective: Any, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        forward, y, num_classes = logits_parts(objective, self.name)
        p = self.params
        if num_classes is not None and (num_classes < 4 or p.n_target_classes > num_classes - 1):
            raise ConfigError(
                f"attack '{self.name}': n_target_classes={p.n_target_classes} needs at least "
                f"{max(4, p.n_target_classes + 1)} classes, the task has {num_classes}"
            )
        return apgd_targeted_perturb(forward, x, y, eps=eps, n_iter=p.steps, n_target_classes=p.n_target_classes,
                                     restarts=p.restarts, rho=p.rho, eot_iter=p.eot_iter,
                                     generator=generator).detach()
