"""Evaluation sanity checks: a robustness number is only reported with these attached.

- :func:`assert_in_ball` runs after *every* attack call: ``x_adv`` must lie in the eps-ball around
  ``x`` and in [0, 1]. A violation is a bug in an attack, so it raises (the run is not recorded).
- :func:`suite_checks` are cheap gradient-masking symptoms in the spirit of Croce & Hein's
  AutoAttack checks and Athalye et al. (2018, Sec. 3.1): a multi-step attack must not be weaker
  than a single step, more steps must not be weaker than fewer, and the clean accuracy must be an
  upper bound of every attacked accuracy -- each judged by a paired sign test on the per-sample
  flags, so random-start noise on a small test set does not raise false alarms. A failed check is
  recorded with the run.
"""
from __future__ import annotations

import math
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


def weaker(stronger: torch.Tensor, weaker_flags: torch.Tensor) -> tuple[bool, str]:
    """Is the attack that should be *stronger* significantly weaker? (paired sign test on flags)

    ``stronger``/``weaker_flags`` are per-sample correctness under two evaluations of the same
    samples. Among discordant samples, ``b`` survive only the stronger attack and ``c`` only the
    other; random starts make a few of each. Flag when ``b - c > max(1, 2 * sqrt(b + c))``, i.e.
    about two standard deviations of a fair coin over the discordant samples.
    """
    b = int((stronger & ~weaker_flags).sum())
    c = int((weaker_flags & ~stronger).sum())
    return b - c > max(1.0, 2.0 * math.sqrt(b + c)), f"{b} vs {c} discordant samples"


def suite_checks(flags: dict[str, torch.Tensor], steps: dict[str, int]) -> list[Check]:
    """Gradient-masking symptoms from per-sample correctness (``flags`` includes ``clean``).

    ``steps`` maps iterative white-box attack ids to their step counts. Each check compares two
    evaluations of the same samples with :func:`weaker`.
    """
    out = []
    clean = flags.get("clean")
    if clean is not None:
        bad = [f"{a} ({d})" for a, f in flags.items() if a != "clean" for w, d in [weaker(f, clean)] if w]
        out.append(Check("clean_is_upper_bound", not bad,
                         "ok" if not bad else f"attacked accuracy above clean: {', '.join(bad)}"))
    if "fgsm" in flags and steps:
        bad = [f"{a} ({d})" for a in steps if a in flags for w, d in [weaker(flags[a], flags["fgsm"])] if w]
        out.append(Check("iterative_beats_single_step", not bad,
                         "ok" if not bad else f"weaker than FGSM, gradient masking? {', '.join(bad)}"))
    ordered = sorted((s, a) for a, s in steps.items() if a in flags)
    bad = [f"{a2} weaker than {a1} ({d})" for (s1, a1), (s2, a2) in zip(ordered, ordered[1:])
           if s2 > s1 for w, d in [weaker(flags[a2], flags[a1])] if w]
    if len(ordered) > 1:
        out.append(Check("more_steps_not_weaker", not bad, "ok" if not bad else "; ".join(bad)))
    return out
