"""Evaluation sanity checks: a robustness number is only reported with these attached.

- :func:`assert_in_ball` runs after *every* attack call: ``x_adv`` must lie in the eps-ball around
  ``x`` and in [0, 1]. A violation is a bug in an attack, so it raises (the run is not recorded).
- :func:`suite_checks` are cheap gradient-masking symptoms in the spirit of Croce & Hein's
  AutoAttack checks and Athalye et al. (2018, Sec. 3.1): a multi-step attack must not be weaker
  than a single step, more steps must not be weaker than fewer, and the clean accuracy must be an
  upper bound of every attacked accuracy. A failed check is recorded and shown; it flags the row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TOL = 1e-6


class AttackIntegrityError(RuntimeError):
    """An attack returned points outside the threat model (a bug, not a user error)."""


def assert_in_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float, where: str) -> None:
    if x_adv.shape != x.shape:
        raise AttackIntegrityError(f"{where}: x_adv has shape {tuple(x_adv.shape)}, x has {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackIntegrityError(f"{where}: x_adv has non-finite values")
    dist = (x_adv - x).abs().amax().item() if x.numel() else 0.0
    if dist > eps + TOL:
        raise AttackIntegrityError(f"{where}: L-inf distance {dist:.6g} exceeds eps {eps:.6g}")
    if x_adv.numel() and (x_adv.min().item() < -TOL or x_adv.max().item() > 1 + TOL):
        raise AttackIntegrityError(f"{where}: x_adv leaves [0, 1]")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def suite_checks(acc: dict[str, float], steps: dict[str, int], tol: float = 0.005) -> list[Check]:
    """Gradient-masking symptoms from per-attack accuracies (``acc`` includes ``clean``).

    ``steps`` maps iterative white-box attack ids to their step counts; ``tol`` is the slack in
    accuracy (fraction) allowed for randomness of the start points.
    """
    out = []
    clean = acc.get("clean")
    if clean is not None:
        worse = [a for a, v in acc.items() if a != "clean" and v > clean + tol]
        out.append(Check("clean_is_upper_bound", not worse,
                         "ok" if not worse else f"attacked accuracy above clean for {', '.join(worse)}"))
    if "fgsm" in acc and steps:
        weaker = [a for a in steps if a in acc and acc[a] > acc["fgsm"] + tol]
        out.append(Check("iterative_beats_single_step", not weaker,
                         "ok" if not weaker else f"{', '.join(weaker)} weaker than FGSM: gradient masking?"))
    ordered = sorted((s, a) for a, s in steps.items() if a in acc)
    bad = [f"{a2}({acc[a2]:.3f}) > {a1}({acc[a1]:.3f})" for (s1, a1), (s2, a2) in zip(ordered, ordered[1:])
           if s2 > s1 and acc[a2] > acc[a1] + tol]
    if len(ordered) > 1:
        out.append(Check("more_steps_not_weaker", not bad, "ok" if not bad else "; ".join(bad)))
    return out
