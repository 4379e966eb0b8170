"""Which attack a report's "under attack" analyses run, so that one (checkpoint, attack) has one number
in a report (issue 12: PGD-20 of one checkpoint showed 36.49 / 35.10 / 34.26 in three sections).

:func:`analysis_attack` picks the run's suite PGD with the random-start seed of its stored evaluation,
:func:`attack_consistency` shows it next to the stored result (and why they differ when they do),
:func:`same_point` puts it into the eps curve at the task's eps.
"""
from __future__ import annotations

from typing import Any

from ..analysis import html as H


def analysis_attack(r, opts: Any, eps: float) -> tuple[Any, int, str | None]:
    """The PGD of the report's "under attack" analyses for run ``r``: the run's suite attack
    ``pgd-<attack_steps>`` with its params and the random-start seed its stored evaluation used
    (``derive_seed(seed, "eval", id)``, as the runner), so the report reproduces the stored number;
    without one in the suite, PGD-``attack_steps`` (step eps/4, random start, seed ``opts.seed``).
    Returns ``(attack, seed, suite attack id or None)``."""
    from ..attacks.pgd import PGD
    from ..config import from_dict
    from ..runner import derive_seed

    aid = f"pgd-{opts.attack_steps}"
    entry = next((a for a in (r.resolved.config.get("suite") or {}).get("attacks", [])
                  if a.get("id") == aid and a.get("attack") == "pgd"), None)
    if entry is not None:
        params = from_dict(PGD.Params, entry.get("params") or {}, f"suite.{aid}.params")
        if params.steps == opts.attack_steps:
            return PGD(params), derive_seed(r.resolved.seed, "eval", aid), aid
    return PGD(PGD.Params(steps=opts.attack_steps, step_size=eps / 4)), opts.seed, None


def n_test(store, run_id: str, checkpoint: str) -> int | None:
    try:
        clean = store.flags(run_id, checkpoint).get("clean")
    except Exception:  # noqa: BLE001 - a store without flags
        return None
    return None if clean is None else int(clean.shape[0])


def attack_consistency(runs: list, store, opts: Any, n_all: int | None) -> str:
    """Which attack "under attack" means in this report, run by run, and its accuracy here next to the
    stored suite result of the same (checkpoint, attack), with why they differ when they do."""
    res = store.results()
    rows, classes = [], []
    for r in runs:
        attack, seed, aid = r.data["attack"]
        o = r.data["out"]
        acc = 100 * float((o.adv_logits.argmax(1) == o.y).float().mean())
        p = attack.params
        what = (f"{aid}: the suite's attack (steps {p.steps}, step {'eps/4' if p.step_size is None else f'{p.step_size:.4g}'}, "
                f"{'random start' if p.random_start else 'no random start'}, restarts {p.restarts}) with the stored "
                f"evaluation's random-start seed" if aid else
                f"PGD-{p.steps} (step eps/4, random start, seed {seed}): the suite has no pgd-{opts.attack_steps}")
        stored = res[(res["run_id"] == r.run_id) & (res["checkpoint"] == opts.checkpoint) & (res["attack"] == aid)
                     & (res["metric"] == "accuracy")]["value"] if aid else []
        sv = 100 * float(stored.iloc[0]) if len(stored) else float("nan")
        if sv != sv:
            why = "no stored suite result to compare"
        elif len(o) != (n_all or len(o)):
            why = f"computed on the first {len(o)} of {n_all} test images (--max-samples); stored: all"
        elif abs(sv - acc) < 1e-9:
            why = "same"
        else:
            why = "differs: other device, threads or library versions than the stored evaluation (docs/leaderboard.md)"
        rows.append([r.label, opts.checkpoint, what, f"{acc:.2f}", "" if sv != sv else f"{sv:.2f}", str(len(o)), why])
        classes.append("" if why in ("same", "no stored suite result to compare") or why.startswith("computed on") else "fail")
    return ("<h3>The attack of the analyses</h3>" + H.table(
        ["run", "checkpoint", "attack run here", "accuracy here %", "stored suite result %", "test images", "agreement"],
        rows, numeric=[False, False, False, True, True, True, False], row_classes=classes)
        + '<p class="note">Every "under attack" number of this report (sparsity, adversarial features, the eps curve at the '
          "task's eps) is this one evaluation; the suite results below are the store's.</p>")


def same_point(curve, r, opts: Any, eps: float) -> None:
    """Put the analyses' own evaluation (:func:`analysis_attack`) at the task's eps of ``curve`` when it
    is the same attack (PGD-``eps_steps``, step eps/4, random start, one restart): one number per
    (checkpoint, attack) in the report."""
    attack, _, _ = r.data["attack"]
    p = attack.params
    if not (p.steps == opts.eps_steps and p.step_size in (None, eps / 4) and p.random_start and p.restarts == 1):
        return
    for i, e in enumerate(curve.eps):
        if abs(e - eps) <= 1e-12 * max(1.0, eps):
            o = r.data["out"]
            flags = (o.adv_logits.argmax(1) == o.y).numpy()
            curve.accuracy[i] = float(flags.mean())
            if curve.flags:
                curve.flags[i] = flags
