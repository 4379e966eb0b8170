"""APGD: Auto-PGD, the step-size-free PGD of AutoAttack (L-inf, L2, L1), on CE, DLR and targeted DLR.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Sec. 3 (Algorithm 1) and Sec. 4 (DLR loss). Implemented after
the authors' code ``fra31/auto-attack @ a392200 : autoattack/autopgd_base.py`` (``APGDAttack`` and
``APGDAttack_targeted``; notes Sec. 8.1), in ``pyautoattack`` 0.2.0's version for L2 and L1. One run
(the start, momentum step, step-size checkpoints and success tracking of Algorithm 1) and the losses
are in :mod:`natbench.attacks._apgd_core`, the L2/L1 pieces (L1-APGD of Croce & Hein, "Mind the box",
ICML 2021: sparsity-adaptive step, projection onto the L1 ball ∩ [0, 1], ``use_largereps``) in
:mod:`natbench.attacks._apgd_norms`; here are the restarts, the targeted cascade and the attacks.
The norm is the threat model's (``self.norm``, bound by :func:`natbench.attacks._base.with_norm`).

``perturb`` (``best_loss=False``, the only mode AutoAttack uses): only the points the model
classifies correctly are attacked; each restart (each target class, for APGD-T) attacks only the
points still robust; the result is the adversarial example where the attack succeeded and the
**clean input** elsewhere, exactly what the original returns.

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

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.attacks._clean import clean_logits
from natbench.attacks._apgd_norms import APGD_NORMS, l1_projection, largereps_schedule
from natbench.attacks._apgd_core import (  # noqa: F401 - the run's pieces, importable from here as before
    Forward, Joint, LossFn, _draw_start, apgd_single_run, checkpoints, ce_loss, dlr_loss, dlr_loss_targeted,
    oscillation_count, schedule, target_classes,
)
from natbench.errors import ConfigError


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
    return clean_logits(forward, x).max(1)[1] == y  # the carried clean logits when given (AutoAttack's)


def apgd_run(forward: Forward | None, x: Tensor, y: Tensor, loss_fn: LossFn | None, *, eps: float, n_iter: int,
             norm: str = "linf", use_largereps: bool = False, generator: torch.Generator | None = None,
             early_stop: bool = False, **kw: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One run as the original's ``perturb`` makes it: :func:`apgd_single_run`, or with
    ``use_largereps`` (L1) the original's ``decr_eps_pgd``: the stages of
    :func:`natbench.attacks._apgd_norms.largereps_schedule`, each from the previous stage's best point
    projected to its eps (the first from ``x + N(0, I)`` projected to 3 eps); the last stage's result.
    Early stop applies to the last stage only (a point fooled at 3 eps or 2 eps is not fooled)."""
    if not use_largereps:
        return apgd_single_run(forward, x, y, loss_fn, eps=eps, n_iter=n_iter, norm=norm, generator=generator,
                               early_stop=early_stop, **kw)
    stages = largereps_schedule(eps, n_iter)
    device = x.device if generator is None else generator.device
    x_init = x + torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    x_init = x_init + l1_projection(x, x_init - x, 1.0 * float(stages[0][0]))
    for s, (e, n) in enumerate(stages):
        x_init = x_init + l1_projection(x, x_init - x, 1.0 * e)
        x_init, acc, loss, x_adv = apgd_single_run(forward, x, y, loss_fn, eps=e, n_iter=n, norm=norm, x_init=x_init,
                                                   generator=generator, early_stop=early_stop and s == len(stages) - 1,
                                                   **kw)
    return x_init, acc, loss, x_adv


def apgd_perturb(forward: Forward, x: Tensor, y: Tensor, loss_fn: LossFn, *, eps: float, n_iter: int,
                 restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
                 generator: torch.Generator | None = None, early_stop: bool = True, norm: str = "linf",
                 use_largereps: bool = False) -> Tensor:
    """The original ``APGDAttack.perturb(x, y)``: restarts on the still-robust, clean-correct points;
    the adversarial example where one succeeded, the clean input elsewhere (``early_stop``: see
    :func:`apgd_single_run`; ``norm``, ``use_largereps``: :func:`apgd_run`)."""
    x = x.detach()
    y = y.to(x.device).long()
    robust = _clean_correct(forward, x, y)
    adv = x.clone()
    for _ in range(restarts):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        _, acc_curr, _, adv_curr = apgd_run(
            forward, x[idx], y[idx], loss_fn, eps=eps, n_iter=n_iter, rho=rho, eot_iter=eot_iter, generator=generator,
            early_stop=early_stop, norm=norm, use_largereps=use_largereps,
        )
        fooled = ~acc_curr
        robust[idx[fooled]] = False
        adv[idx[fooled]] = adv_curr[fooled]
    return adv


def apgd_targeted_perturb(forward: Forward, x: Tensor, y: Tensor, *, eps: float, n_iter: int,
                          n_target_classes: int = 9, restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
                          generator: torch.Generator | None = None, early_stop: bool = True,
                          stack_targets: bool = False, norm: str = "linf", use_largereps: bool = False) -> Tensor:
    """The original ``APGDAttack_targeted.perturb(x, y)``: for target ranks 2 .. n_target_classes + 1,
    targets from the clean logits of the points still robust, ``restarts`` runs each.

    ``stack_targets`` (one restart only): every target of every clean-correct point in one batch
    (target-major rows, with early stop a point's later targets leave once an earlier one fooled it);
    per point the result of a sequential cascade with the same starts: the first target that fools
    it wins. The starts differ from the original's, though: it draws each target's starts for the
    points still robust, which are known only after the earlier targets ran; stacked, every target
    draws for all points (the original's draws exactly when no earlier target fooled a point). So
    the flags can differ from the original's on points whose outcome depends on the start.

    The clean logits are computed once (the original recomputes them on the still-robust points
    before every target: the same forward of an evaluated model)."""
    x = x.detach()
    y = y.to(x.device).long()
    clean = clean_logits(forward, x)  # the carried ones when given (AutoAttack's)
    robust = clean.max(1)[1] == y
    ranking = clean.sort(dim=1)[1]
    adv = x.clone()
    if stack_targets and restarts == 1 and not use_largereps:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            return adv
        n, ranks = idx.numel(), range(2, n_target_classes + 2)
        xs = x[idx]
        # the starts the sequential cascade draws when no earlier target fools a point of the chunk
        start = torch.cat([_draw_start(xs, eps, generator, norm) for _ in ranks])
        _, acc, _, adv_curr = apgd_single_run(
            forward, xs.repeat(len(ranks), *([1] * (x.dim() - 1))), y[idx].repeat(len(ranks)), None, eps=eps,
            n_iter=n_iter, rho=rho, eot_iter=eot_iter, y_target=torch.cat([ranking[idx, -k] for k in ranks]),
            early_stop=early_stop, start=start, group=torch.arange(n, device=x.device).repeat(len(ranks)) if early_stop else None,
            norm=norm,
        )
        group = torch.arange(n, device=x.device).repeat(len(ranks))
        rows = (~acc).nonzero().squeeze(1)
        first = torch.full((n,), acc.numel(), device=x.device, dtype=torch.long)
        first.scatter_reduce_(0, group[rows], rows, "amin")  # the first target (in rank order) that fools each point
        hit = first < acc.numel()
        adv[idx[hit]] = adv_curr[first[hit]]
        return adv
    return targeted_cascade(forward, x, y, robust, adv, lambda idx, rank: target_classes(clean[idx], rank),
                            range(2, n_target_classes + 2), eps=eps, n_iter=n_iter, restarts=restarts, rho=rho,
                            eot_iter=eot_iter, generator=generator, early_stop=early_stop, norm=norm,
                            use_largereps=use_largereps)


def targeted_cascade(forward: Forward, x: Tensor, y: Tensor, robust: Tensor, adv: Tensor,
                     targets: Callable[[Tensor, int], Tensor], ranks: Iterable[int], *, eps: float, n_iter: int,
                     restarts: int, rho: float, eot_iter: int, generator: torch.Generator | None,
                     early_stop: bool, norm: str = "linf", use_largereps: bool = False) -> Tensor:
    """APGD-T's cascade (also MALT's): for each of ``ranks`` in order, ``restarts`` targeted runs on the
    points still ``robust``, with targets ``targets(idx, rank)`` for those points' rows ``idx``; ``robust``
    and ``adv`` are updated in place (a fooled point takes its adversarial example); returns ``adv``."""
    for rank in ranks:
        for _ in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            _, acc_curr, _, adv_curr = apgd_run(
                forward, x[idx], y[idx], None, eps=eps, n_iter=n_iter, rho=rho, eot_iter=eot_iter,
                generator=generator, y_target=targets(idx, rank), early_stop=early_stop, norm=norm,
                use_largereps=use_largereps,
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
    norms = APGD_NORMS

    @dataclass(frozen=True)
    class Params:
        steps: int = 100  # iterations per run (n_iter; AutoAttack standard: 100)
        restarts: int = 1  # random restarts, each on the points still robust (AutoAttack standard: 1; L1: 5)
        rho: float = 0.75  # halve the step when the loss rose in <= rho * k of the last k steps
        eot_iter: int = 1  # gradients averaged over this many passes (EOT; AutoAttack 'rand': 20)
        early_stop: bool = True  # a fooled point leaves the batch (same flags; x' = first misclassified iterate)
        use_largereps: bool = False  # L1 only: each run at eps x 3, 2, 1 (AutoAttack's L1 standard: true)

    def __init__(self, params: "APGDCE.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.steps < 1 or p.restarts < 1 or p.eot_iter < 1 or not (0 < p.rho <= 1):
            raise ConfigError(f"attack '{self.name}' needs steps >= 1, restarts >= 1, eot_iter >= 1, 0 < rho <= 1; got {p}.")

    def set_norm(self, norm: str) -> None:
        """Bind ``norm``; ``use_largereps`` is the original's L1 schedule only (it asserts the norm)."""
        if self.params.use_largereps and norm != "l1":
            raise ConfigError(f"attack '{self.name}': use_largereps is L1-APGD's schedule, the threat model's norm "
                              f"is '{norm}'; set use_largereps: false or use threat_model.norm l1")
        self.norm = norm

    def _loss_fn(self) -> LossFn:
        return ce_loss

    def __call__(self, objective: Any, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        forward, y, num_classes = logits_parts(objective, self.name)
        if self.loss == "dlr" and num_classes is not None and num_classes < 3:
            raise ConfigError(f"attack '{self.name}': the DLR loss needs at least 3 classes, the task has {num_classes}")
        p = self.params
        return apgd_perturb(forward, x, y, self._loss_fn(), eps=eps, n_iter=p.steps, restarts=p.restarts,
                            rho=p.rho, eot_iter=p.eot_iter, generator=generator, early_stop=p.early_stop,
                            norm=self._bound_norm(), use_largereps=p.use_largereps).detach()

    def _bound_norm(self) -> str:
        if self.params.use_largereps and self.norm != "l1":
            self.set_norm(self.norm)  # the ConfigError
        return self.norm


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
        early_stop: bool = True  # a fooled point leaves the batch (same flags; x' = first misclassified iterate)
        use_largereps: bool = False  # L1 only: each run at eps x 3, 2, 1

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
        early_stop: bool = True  # a fooled point leaves the batch (same flags; x' = first misclassified iterate)
        use_largereps: bool = False  # L1 only: each run at eps x 3, 2, 1 (AutoAttack's L1 standard: true)
        n_target_classes: int = 9  # targets: the 2nd .. (n+1)-th highest clean logits (AutoAttack: 9; L1: 5)
        stack_targets: bool = False  # all targets in one stacked batch (GPU); starts differ from the original's

    def __init__(self, params: "APGDT.Params | None" = None) -> None:
        super().__init__(params)
        if self.params.n_target_classes < 1:
            raise ConfigError(f"attack '{self.name}' needs n_target_classes >= 1; got {self.params}.")
        if self.params.stack_targets and self.params.use_largereps:
            raise ConfigError(f"attack '{self.name}': stack_targets runs one stage per target; it cannot be "
                              f"combined with use_largereps (three stages); set one of them to false")

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
                                     generator=generator, early_stop=p.early_stop,
                                     stack_targets=p.stack_targets, norm=self._bound_norm(),
                                     use_largereps=p.use_largereps).detach()
