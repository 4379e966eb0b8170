"""Robust accuracy against the perturbation budget eps (one curve per defense), and two sanity checks
on the curve in the style of :mod:`natbench.checks` (Carlini et al. 2019, "On Evaluating Adversarial
Robustness", Sec. 5: accuracy must fall as eps grows and reach ~0 when eps allows any image).

Each point is the task's own evaluation (``task.evaluate``) under PGD in the task's norm (L-inf or L2) with ``steps`` steps of
``step_frac * eps`` and a uniform random start (the suite's PGD convention, step eps/4); eps = 0 is
the clean accuracy. Per-sample correctness is kept so monotonicity is judged by the paired sign test
of :func:`natbench.checks.weaker`, not by raw differences that random starts can reverse.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..checks import Check, weaker

#: default budgets, as multiples of the task's eps
DEFAULT_MULTIPLES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass
class EpsCurve:
    """``eps`` (increasing) and ``accuracy`` (fractions) per point; ``flags[i]`` per-sample correctness."""

    eps: list[float]
    accuracy: list[float]
    flags: list[np.ndarray] = field(default_factory=list)
    attack: str = ""


def default_eps_list(task_eps: float, multiples: Sequence[float] = DEFAULT_MULTIPLES, cap: float = 1.0) -> list[float]:
    """``multiples x task_eps`` capped at ``cap`` (L-inf: any image is reachable at eps 1; an L2/L1 caller
    passes its norm's, :func:`natbench.checks.reach_eps`), without duplicates."""
    out: list[float] = []
    for m in multiples:
        e = min(float(cap), float(m) * float(task_eps))
        if not any(abs(e - o) < 1e-12 for o in out):
            out.append(e)
    return sorted(out)


def accuracy_vs_eps(task: Any, model: torch.nn.Module, loader: Any, eps_list: Sequence[float], *, steps: int = 20,
                    step_frac: float = 0.25, device: torch.device | str = "cpu", seed: int = 0,
                    metric: str = "accuracy", on_point: Callable[[], None] | None = None) -> EpsCurve:
    """Accuracy under PGD-``steps`` (step ``step_frac * eps``, uniform start) at every eps of
    ``eps_list`` (sorted); each point draws its random start from its own generator (``seed``, index).
    PGD runs in the task's threat-model norm (L-inf or L2)."""
    from ..attacks._base import with_norm
    from ..attacks.pgd import PGD

    eps_sorted = sorted(float(e) for e in eps_list)
    if any(e < 0 for e in eps_sorted):
        raise ValueError(f"eps values must be >= 0, got {eps_sorted}")
    curve = EpsCurve([], [], [], f"PGD-{steps} (step {step_frac:g} eps, random start)")
    for i, e in enumerate(eps_sorted):
        attack = None if e == 0 else with_norm(PGD(PGD.Params(steps=steps, step_size=step_frac * e)),
                                               getattr(task.threat, "norm", "linf"), "accuracy_vs_eps")
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        out = task.evaluate(model, loader, attack, eps=e if e > 0 else None, generator=gen, device=device)
        curve.eps.append(e)
        curve.accuracy.append(float(out.metrics[metric]))
        curve.flags.append(np.asarray(out.correct, dtype=bool))
        if on_point is not None:
            on_point()
    return curve


def eps_curve_checks(curve: EpsCurve, *, max_final_accuracy: float = 0.05) -> list[Check]:
    """``eps_curve_non_increasing``: no larger eps is significantly *weaker* than a smaller one (paired
    sign test on the per-sample flags, :func:`natbench.checks.weaker`; raw accuracies when the flags
    are missing); ``eps_curve_reaches_zero``: the accuracy at the largest eps is at most
    ``max_final_accuracy`` (meaningful when the largest eps is large: a few times the task's)."""
    out = []
    bad = []
    for i in range(1, len(curve.eps)):
        e1, e2 = curve.eps[i - 1], curve.eps[i]
        if curve.flags and len(curve.flags) == len(curve.eps):
            w, d = weaker(torch.as_tensor(curve.flags[i]), torch.as_tensor(curve.flags[i - 1]))
        else:
            w, d = curve.accuracy[i] > curve.accuracy[i - 1] + 1e-12, "accuracies only"
        if w:
            bad.append(f"eps {e2:.4g} weaker than eps {e1:.4g} ({d})")
    out.append(Check("eps_curve_non_increasing", not bad, "ok" if not bad else "gradient masking? " + "; ".join(bad)))
    if curve.eps:
        last = curve.accuracy[-1]
        out.append(Check("eps_curve_reaches_zero", last <= max_final_accuracy,
                         f"accuracy {100 * last:.2f}% at eps {curve.eps[-1]:.4g} (threshold {100 * max_final_accuracy:.0f}%)"))
    return out
