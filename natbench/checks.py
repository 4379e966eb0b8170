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


def assert_in_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float, where: str, norm: str = "linf") -> None:
    """Raise :class:`AttackIntegrityError` unless every ``x_adv`` row lies within ``eps`` of ``x`` in
    ``norm`` (``linf``/``l2``/``l1``, tolerance :data:`TOL` relative to ``max(1, eps)``) and in [0, 1]."""
    from .attacks._base import lp_norms

    if x_adv.shape != x.shape:
        raise AttackIntegrityError(f"{where}: x_adv has shape {tuple(x_adv.shape)}, x has {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackIntegrityError(f"{where}: x_adv has non-finite values")
    dist = lp_norms((x_adv - x).double(), norm).max().item() if x.numel() else 0.0
    if dist > eps + TOL * max(1.0, eps):
        label = {"linf": "L-inf", "l2": "L2", "l1": "L1"}.get(norm, norm)
        raise AttackIntegrityError(f"{where}: {label} distance {dist:.6g} exceeds eps {eps:.6g}")
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


def suite_checks(flags: dict[str, torch.Tensor], steps: dict[str, int],
                 black_box: set[str] | frozenset[str] = frozenset()) -> list[Check]:
    """Gradient-masking symptoms from per-sample correctness (``flags`` includes ``clean``).

    ``steps`` maps iterative white-box attack ids to their step counts; ``black_box`` names the
    query/transfer attacks (Square, transfer), which a white-box attack must not be significantly
    weaker than. Each check compares two evaluations of the same samples with :func:`weaker`.
    """
    out = []
    bb = [a for a in black_box if a in flags]
    if bb:
        wb = [a for a in flags if a != "clean" and a not in black_box]
        bad = [f"{w} weaker than {b} ({d})" for w in wb for b in bb for weak, d in [weaker(flags[w], flags[b])] if weak]
        out.append(Check("whitebox_not_above_blackbox", not bad,
                         "ok" if not bad else "gradient masking? " + "; ".join(bad)))
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


def attack_checks(attacks) -> list[Check]:
    """The checks the attacks themselves made since they were last asked (an attack with a
    ``take_checks()`` method: AutoAttack's Square check, the original AutoAttack's warnings)."""
    return [c for a in attacks if callable(getattr(a, "take_checks", None)) for c in a.take_checks()]


#: the checks :func:`suite_checks` makes (recomputed after an escalation)
SUITE_CHECKS = frozenset({"whitebox_not_above_blackbox", "clean_is_upper_bound", "iterative_beats_single_step",
                          "more_steps_not_weaker"})

#: ``failed check -> [(result id, attack, params)]``: the stronger evaluation each symptom calls for
#: (docs/flags.md). Masking of the gradient: the gradient-free Square; an attack whose progress is
#: not monotone: PGD with 10 restarts at the suite's largest step count; a white-box attack weaker
#: than a black-box one: a transfer attack from a vanilla model of the same architecture (Athalye et
#: al. 2018, Sec. 3.1; cheap, and often NAT's adversary already); a randomized model (or an attacked
#: accuracy above the clean one, its symptom): EOT, AutoAttack's ``rand`` version.
ESCALATIONS: dict[str, list[tuple[str, str, dict]]] = {
    "gradient_nonzero": [("escalated-square", "square", {})],
    "large_eps_reaches_zero": [("escalated-square", "square", {})],
    "iterative_beats_single_step": [("escalated-square", "square", {})],
    "more_steps_not_weaker": [("escalated-restarts", "pgd", {"restarts": 10}), ("escalated-square", "square", {})],
    "whitebox_not_above_blackbox": [("escalated-transfer", "transfer", {"surrogate": "vanilla", "arch": "", "steps": 20})],
    "deterministic": [("escalated-eot", "autoattack-rand", {})],
    "clean_is_upper_bound": [("escalated-eot", "autoattack-rand", {})],
}
#: objective kind each escalation attack needs from the task
_NEEDS = {"square": "logits", "pgd": "ce", "transfer": "labels", "autoattack-rand": "logits"}


def escalations(failed: set[str], suite: dict[str, str], steps: dict[str, int],
                objectives: tuple[str, ...] | list[str], norm: str = "linf",
                registry=None) -> list[tuple[str, str, dict]]:
    """The escalated evaluations ``(id, attack, params)`` that the ``failed`` checks call for
    (:data:`ESCALATIONS`), each once, skipping an attack the suite (``id -> attack name``) already
    runs, those whose objective the task (``objectives``) does not offer and those whose class does
    not list the threat model's ``norm`` in ``norms`` (looked up in ``registry``, default the built-in
    one). The restarts PGD takes the largest step count among the suite's PGD attacks (``steps``; 20
    without any)."""
    out: dict[str, tuple[str, str, dict]] = {}
    in_suite = set(suite.values())
    if norm != "linf" and registry is None:
        from .registry import get_registry

        registry = get_registry()
    for name in sorted(failed):
        for aid, attack, params in ESCALATIONS.get(name, ()):
            if aid in out or _NEEDS[attack] not in objectives:
                continue
            if norm != "linf" and norm not in getattr(registry.load("attacks", attack), "norms", ("linf",)):
                continue
            if attack == "pgd":
                params = {**params, "steps": max(steps.values(), default=20)}
            elif attack in in_suite:
                continue
            out[aid] = (aid, attack, params)
    return list(out.values())


def reach_eps(norm: str, x: torch.Tensor | None) -> float:
    """An eps at which any image of ``x``'s shape is reachable from any other in ``norm``: L-inf 1,
    L2 ``sqrt(d)``, L1 ``d`` for ``d`` values per sample (the diameter of [0, 1]^d)."""
    if norm == "linf":
        return 1.0
    d = x[0].numel() if x is not None else 1
    return {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]


def model_checks(task, model, loader, *, device, generator: torch.Generator | None = None,
                 large_eps: float | None = None, max_large_eps_acc: float = 0.05, min_nonzero_grad: float = 0.5,
                 registry=None) -> list[Check]:
    """Checks that need the model itself (Athalye et al. 2018, Sec. 3.1; Carlini et al. 2019, Sec. 5):

    - ``deterministic``: two eval-mode forward passes give the same logits (else the defense is
      randomized: evaluate it with EOT, ``autoattack-rand``);
    - ``gradient_nonzero``: the input gradient of the CE objective is non-zero for at least
      ``min_nonzero_grad`` of the test samples;
    - ``large_eps_reaches_zero``: PGD-20 (step eps/4) in the task's threat-model norm at ``large_eps``
      (default :func:`reach_eps` of the norm: any image reachable) leaves at most ``max_large_eps_acc``
      accuracy. L1 has no PGD in natbench: there the check runs APGD-CE (20 iterations) in L1 when the
      ``apgd-ce`` attack of ``registry`` lists ``l1`` in its norms; otherwise it is skipped, and the
      recorded check says so (passed, with the reason).
    """
    from .attacks._base import with_norm
    from .attacks.pgd import PGD

    norm = getattr(getattr(task, "threat", None), "norm", "linf")
    was = model.training
    model.eval()
    max_diff, nonzero, total, shape = 0.0, 0, 0, None
    try:
        for batch in loader:
            batch = batch.to(device)
            with torch.no_grad():
                z1 = task.logits(model, batch, batch.x)
                z2 = task.logits(model, batch, batch.x)
            max_diff = max(max_diff, (z1 - z2).abs().max().item() if z1.numel() else 0.0)
            x = batch.x.clone().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(task.objective(model, batch, "ce")(x).sum(), x)
            nonzero += int((g.flatten(1).abs().amax(1) > 0).sum())
            total += len(x)
            shape = shape if shape is not None or not len(x) else batch.x[:1]
    finally:
        model.train(was)
    out = [Check("deterministic", max_diff == 0.0, f"max |logit difference| between two passes {max_diff:.3g}")]
    frac = nonzero / max(total, 1)
    out.append(Check("gradient_nonzero", frac >= min_nonzero_grad,
                     f"input gradient non-zero for {nonzero}/{total} samples"))
    eps = reach_eps(norm, shape) if large_eps is None else large_eps
    label = {"linf": "", "l2": " L2", "l1": " L1"}[norm]
    if norm == "l1":
        if registry is None:
            from .registry import get_registry

            registry = get_registry()
        cls = registry.load("attacks", "apgd-ce")
        if "l1" not in getattr(cls, "norms", ("linf",)):
            out.append(Check("large_eps_reaches_zero", True, "skipped: no L1 attack in natbench can run it "
                                                             "(apgd-ce lists no l1), and L1 has no PGD"))
            return out
        attack, what = cls(cls.Params(steps=20)), "APGD-CE-20"
    else:
        attack, what = PGD(PGD.Params(steps=20, step_size=eps / 4)), "PGD-20"
    with_norm(attack, norm, "check large_eps_reaches_zero")
    acc = task.evaluate(model, loader, attack, objective=getattr(attack, "objective_kind", "ce"),  # APGD: logits
                        eps=eps, generator=generator, device=device).metrics["accuracy"]
    out.append(Check("large_eps_reaches_zero", acc <= max_large_eps_acc,
                     f"accuracy {100 * acc:.2f}% under{label} {what} at eps {eps:g}"))
    return out
