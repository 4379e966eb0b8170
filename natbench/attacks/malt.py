"""MALT: APGD-T on the target classes ranked by mesoscopic almost-linearity, not by the logits.

Melamed, Yehudai & Shamir, "MALT Powers Up Adversarial Attacks", NeurIPS 2024, arXiv 2407.02240.
Targeting after the authors' code ``odeliamel/MALT @ 2e7d57b : targeting.py``
(``get_k_best_target_classes``, ``fast_find_matrix_around_image``, ``get_class_rank``) and the cascade
after ``MALT_attack.py`` (``MALTAttack.attack_batch``), defaults from its ``demo.py``
(``MALTAttack(k=9, norm=np.inf, testk=100)``).

Targeting (per clean-correct point ``x`` with label ``y``, logits ``z``). Under a linear model of the
logits around ``x``, the L-inf distance from ``x`` to the boundary between ``y`` and class ``j`` is the
gap divided by the dual (L1) norm of the gap's gradient::

    score_j = (z_y(x) - z_j(x)) / || grad_x (z_j - z_y)(x) ||_1

computed for the ``n_tested`` classes with the highest logits other than ``y`` (``testk``; all others
score +inf), one backward pass per tested class; the ``n_target_classes`` (``k``) classes with the
smallest scores are the targets, smallest first (exact for a linear model: see
``tests/test_malt.py``). As in the authors' ``get_class_rank``, a class whose gap gradient is zero
scores 0 (the authors' score matrix starts at zeros and only the non-zero-norm entries are
divided), so it is ranked first; kept on purpose. Ties go to the class with the higher logit (the
authors' ``topk`` leaves the order of ties unspecified).

Attack. For each target, in rank order, one APGD-T run (``restarts`` runs) on the points still
robust: natbench's :func:`natbench.attacks.apgd.apgd_single_run` with the targeted DLR loss of
AutoAttack's APGD-T (Croce & Hein, ICML 2020, Eq. 7), 100 iterations, success = misclassified, the
starts drawn per target for the still-robust points exactly as :class:`natbench.attacks.apgd.APGDT`
draws them. So MALT differs from APGD-T only in which classes are targeted and in which order
(``tests/test_malt.py`` checks that equal gap-gradient norms give APGD-T's result exactly). The
output is the adversarial example where a run succeeded, the clean input elsewhere (clean-
misclassified points are not attacked), as AutoAttack's components return.

Deviations from the authors' code, and what could not be confirmed:

- The authors' demo attacks each target with ``adv_lib``'s targeted ``apgd`` (jeromerony/adversarial-
  library: the target-vs-rest DLR loss, success = *classified as the target*, a point misclassified
  into another class stays in the cascade and keeps its clean input). Here the run is AutoAttack's
  APGD-T (loss and success as above), the attack the issue and the paper's name for it (APGD-T)
  ask for; a point counts as fooled once it is misclassified into any class.
- The authors compute the targets on every point of the batch and use the predicted class in the
  numerator; here only the clean-correct points are ranked (prediction = label there).
- Only gradients of the (single, non-EOT) clean forward are used for the ranking; ``eot_iter``
  applies to the APGD runs.
- The number of targets and tested classes are the demo's (``k=9``, ``testk=100``); the paper's text
  (its Algorithm and experiment settings) could not be read here (no copy of the full paper was
  available to this implementation), so whether the paper's CIFAR-100/ImageNet numbers used other
  values is not confirmed. On a 10-class task ``k=9`` attacks every class, in MALT's order.

Objective kind ``"logits"`` (a :class:`natbench.contracts.LogitsObjective`), evaluated on subsets of
the batch's rows, as APGD-T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from natbench.attacks._base import LinfAttack, check_eps
from natbench.attacks._clean import clean_logits
from natbench.attacks.apgd import Forward, logits_parts, targeted_cascade
from natbench.errors import ConfigError


def _scores(forward: Forward, x: Tensor, y: Tensor, n_tested: int) -> tuple[Tensor, Tensor]:
    """``(scores (B, C), tested (B, n))``: the tested classes, highest logit first, and their scores."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = forward(xg)
        rows = torch.arange(x.shape[0], device=x.device)
        z_y = logits[rows, y]
        masked = logits.detach().scatter(1, y.view(-1, 1), float("-inf"))
        n = min(n_tested, logits.shape[1] - 1)
        tested = masked.sort(dim=1, descending=True, stable=True)[1][:, :n]  # highest logits first
        scores = torch.full(logits.shape, float("inf"), device=x.device, dtype=logits.dtype)
        for r in range(n):
            gap = z_y - logits[rows, tested[:, r]]  # (B,): z_y - z_j
            (g,) = torch.autograd.grad(-gap.sum(), xg, retain_graph=r < n - 1)  # grad of z_j - z_y, per row
            norm = g.reshape(g.shape[0], -1).abs().sum(1)
            scores[rows, tested[:, r]] = torch.where(norm != 0, gap.detach() / torch.where(norm != 0, norm, 1.0), 0.0)
    return scores, tested


def malt_scores(forward: Forward, x: Tensor, y: Tensor, n_tested: int) -> Tensor:
    """``(B, C)`` MALT scores ``(z_y - z_j) / ||grad (z_j - z_y)||_1`` of the ``n_tested`` highest
    logits other than ``y`` (+inf elsewhere, ``y`` included; 0 where the gradient is zero), from one
    forward and ``n_tested`` backward passes through the batch."""
    return _scores(forward, x, y, n_tested)[0]


def malt_targets(forward: Forward, x: Tensor, y: Tensor, n_targets: int, n_tested: int) -> Tensor:
    """``(B, n_targets)`` target classes, the smallest MALT score first (ties: the higher logit first)."""
    scores, tested = _scores(forward, x, y, n_tested)
    order = scores.gather(1, tested).sort(dim=1, stable=True)[1]
    return tested.gather(1, order)[:, :n_targets]


def malt_perturb(forward: Forward, x: Tensor, y: Tensor, *, eps: float, n_iter: int, n_targets: int,
                 n_tested: int, restarts: int = 1, rho: float = 0.75, eot_iter: int = 1,
                 generator: torch.Generator | None = None, early_stop: bool = True) -> Tensor:
    """MALT's cascade: targets ranked on the clean-correct points, then APGD-T per target (rank order,
    ``restarts`` runs each) on the points still robust; the adversarial example where a run succeeded,
    the clean input elsewhere."""
    x = x.detach()
    y = y.to(x.device).long()
    adv = x.clone()
    clean = clean_logits(forward, x)  # the carried ones when given
    n_classes = clean.shape[1]
    if n_classes < 4 or n_targets > n_classes - 1:
        raise ConfigError(f"attack 'malt': n_target_classes={n_targets} needs at least {max(4, n_targets + 1)} classes "
                          f"(targeted DLR), the model has {n_classes}; set params n_target_classes: {max(1, n_classes - 1)}")
    robust = clean.max(1)[1] == y
    idx0 = robust.nonzero().squeeze(1)
    if idx0.numel() == 0:
        return adv
    targets = torch.zeros(x.shape[0], n_targets, dtype=torch.long, device=x.device)
    targets[idx0] = malt_targets(forward, x[idx0], y[idx0], n_targets, n_tested)
    return targeted_cascade(forward, x, y, robust, adv, lambda idx, rank: targets[idx, rank], range(n_targets),
                            eps=eps, n_iter=n_iter, restarts=restarts, rho=rho, eot_iter=eot_iter,
                            generator=generator, early_stop=early_stop)


class MALT(LinfAttack):
    """MALT (Melamed, Yehudai & Shamir, NeurIPS 2024): APGD-T on the targets ranked by mesoscopic
    almost-linearity (odeliamel/MALT); see the module docstring for what follows the authors' code."""

    name = "malt"
    objective_kind = "logits"
    #: L-inf only: the score divides by the L1 (dual) norm of the gap's gradient, the authors' L-inf
    #: targeting; the authors' code has other norms, not implemented here
    norms = ("linf",)

    @dataclass(frozen=True)
    class Params:
        steps: int = 100  # APGD-T iterations per target (AutoAttack: 100)
        n_target_classes: int = 9  # targets attacked, smallest MALT score first (authors' demo: k=9)
        n_tested: int = 100  # highest logits (other than y) scored (authors' demo: testk=100; capped at C-1)
        restarts: int = 1  # APGD-T runs per target, each on the points still robust
        rho: float = 0.75  # APGD: halve the step when the loss rose in <= rho * k of the last k steps
        eot_iter: int = 1  # APGD gradients averaged over this many passes (EOT)
        early_stop: bool = True  # a fooled point leaves the batch (same flags; x' = first misclassified iterate)

    def __init__(self, params: "MALT.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if (p.steps < 1 or p.restarts < 1 or p.eot_iter < 1 or not (0 < p.rho <= 1) or p.n_target_classes < 1
                or p.n_tested < p.n_target_classes):
            raise ConfigError(
                f"attack '{self.name}' needs steps >= 1, restarts >= 1, eot_iter >= 1, 0 < rho <= 1, "
                f"n_target_classes >= 1 and n_tested >= n_target_classes; got {p}."
            )

    def __call__(self, objective: Any, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        forward, y, _ = logits_parts(objective, self.name)  # the class count is read off the logits
        p = self.params
        return malt_perturb(forward, x, y, eps=eps, n_iter=p.steps, n_targets=p.n_target_classes,
                            n_tested=p.n_tested, restarts=p.restarts, rho=p.rho, eot_iter=p.eot_iter,
                            generator=generator, early_stop=p.early_stop).detach()
