"""The ``corruptions`` suite: its grid entry, and the summary of its results (mean, CE, mCE).

**The grid entry.** A suite entry ``{id: corr, attack: corruption}`` whose params name neither a
``corruption`` nor a ``severity`` stands for the grid ``corruptions`` x ``severities`` (params; the
defaults are all 15 ImageNet-C corruptions and severities 1-5) and is expanded when the suite is
loaded into one entry per pair, ``corr-<corruption>-<severity>`` (e.g. ``corr-gaussian_noise-3``),
the other params (``seed``, ``source``, ``upscale``, ``side``) passed to each. Each entry is one
evaluation, stored like an attack (results + per-sample flags). A subset for a quick look::

    suite: corruptions-quick
    attacks:
      - {id: corr, attack: corruption, params: {corruptions: [gaussian_noise, fog], severities: [3]}}

A single entry (``params: {corruption: fog, severity: 3}``) must have the id ``corr-fog-3``: the
readers (leaderboard, report) know a corruption result by its id.

**The summary** (:func:`summary`): the mean of the headline metric over the entries that were run,
the mean per corruption, and CE / mCE (:func:`natbench.corruptions.corruption_errors`) relative to a
named baseline run (default: the same task's ``vanilla`` run; ImageNet-C uses AlexNet). The error of
an entry is ``1 - metric`` (accuracy, rank-1 or mAP). A corruption whose five severities were not all
run on both sides is left out of mCE and listed; without a baseline mCE is missing with the reason.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import re

from .errors import ConfigError, NatbenchError

ATTACK = "corruption"
#: result ids of corruption entries: ``corr-<corruption>-<severity>`` (torch-free: the leaderboard reads them)
PREFIX = "corr"
_ID = re.compile(rf"^{PREFIX}-([a-z_]+)-([1-5])$")


def entry_id(corruption: str, severity: int) -> str:
    return f"{PREFIX}-{corruption}-{int(severity)}"


def parse_id(aid: str) -> tuple[str, int] | None:
    """``(corruption, severity)`` of a corruption result id, None for any other id."""
    m = _ID.match(str(aid))
    return (m.group(1), int(m.group(2))) if m else None
_GRID_KEYS = ("corruptions", "severities")


def expand(suite: Any) -> Any:
    """``suite`` (a :class:`~natbench.taskspec.SuiteSpec`) with every corruption grid entry expanded
    (module docstring); the suite itself when it has none."""
    if not any(a.attack == ATTACK for a in suite.attacks):
        return suite
    from .corruptions import CORRUPTIONS, SEVERITIES, check
    from .taskspec import SuiteAttack

    out = []
    for a in suite.attacks:
        if a.attack != ATTACK:
            out.append(a)
            continue
        params = dict(a.params)
        where = f"suite {suite.suite or '?'}: entry {a.id}"
        if "corruption" in params or "severity" in params:
            if any(k in params for k in _GRID_KEYS):
                raise ConfigError(f"{where}: give either corruption/severity (one entry) or corruptions/severities (a grid)")
            want = entry_id(params.get("corruption", "gaussian_noise"), params.get("severity", 1))
            if a.id != want:
                raise ConfigError(f"{where}: a corruption entry's id must be {want} (the readers know it by its id)")
            out.append(a)
            continue
        if a.id != PREFIX:
            raise ConfigError(f"{where}: a corruption grid entry's id must be '{PREFIX}' (its entries are {PREFIX}-<corruption>-<severity>)")
        names = params.pop("corruptions", "all")
        sevs = params.pop("severities", list(SEVERITIES))
        names = list(CORRUPTIONS) if names == "all" else names
        if not isinstance(names, (list, tuple)) or not isinstance(sevs, (list, tuple)) or not names or not sevs:
            raise ConfigError(f"{where}: corruptions and severities must be non-empty lists (corruptions may be 'all'), "
                              f"e.g. corruptions: [gaussian_noise, fog], severities: [1, 3]")
        for c in names:
            for s in sevs:
                try:
                    check(c, s)
                except NatbenchError as e:
                    raise ConfigError(f"{where}: {e}") from None
                out.append(SuiteAttack(entry_id(c, s), ATTACK, {**params, "corruption": c, "severity": int(s)}, a.objective))
    expanded = dataclasses.replace(suite, attacks=tuple(out))
    expanded.validate(f"suite {suite.suite}")
    return expanded


@dataclass
class Summary:
    """The corruption results of one row (a run's checkpoint, or a row of runs averaged)."""

    metric: str
    values: dict[tuple[str, int], float]  # (corruption, severity) -> metric in [0, 1]
    mean: float = math.nan  # over every entry run
    per_corruption: dict[str, float] = field(default_factory=dict)  # mean over the severities run
    ce: dict[str, float] = field(default_factory=dict)  # percent, vs the baseline
    mce: float = math.nan  # percent; NaN: see mce_note
    mce_note: str = ""  # why mCE is missing, or which corruptions it leaves out
    baseline: str = ""  # the baseline row's label


def values_of(results: Any, metric: str) -> dict[tuple[str, int], float]:
    """``(corruption, severity) -> value`` from result rows (a frame with columns ``attack``,
    ``metric``, ``value``, already restricted to one run and checkpoint) for ``metric``; NaN values
    (an entry that could not be computed) are left out: missing, never 0."""
    out: dict[tuple[str, int], float] = {}
    rows = results[results["metric"] == metric]
    for aid, v in zip(rows["attack"], rows["value"]):
        key = parse_id(aid)
        if key is not None and v == v:
            out[key] = float(v)
    return out


def summary(values: dict[tuple[str, int], float], metric: str, baseline: dict[tuple[str, int], float] | None = None,
            baseline_label: str = "", no_baseline: str = "") -> Summary:
    """Mean, per-corruption means and (with ``baseline``'s values) CE / mCE of one row's ``values``;
    ``no_baseline``: why there is no baseline (shown as mCE's note)."""
    from .corruptions import CORRUPTIONS, corruption_errors

    s = Summary(metric, dict(values), baseline=baseline_label)
    if values:
        s.mean = sum(values.values()) / len(values)
    for c in CORRUPTIONS:
        got = [v for (name, _), v in values.items() if name == c]
        if got:
            s.per_corruption[c] = sum(got) / len(got)
    if baseline is None:
        s.mce_note = no_baseline or "no baseline run"
        return s
    s.ce, s.mce, missing = corruption_errors(_errors(values), _errors(baseline))
    if not s.ce:
        s.mce_note = "no corruption with all 5 severities on both this row and the baseline"
    elif missing:
        s.mce_note = f"over {len(s.ce)} of 15 corruptions (missing: {', '.join(missing)})"
    return s


def _errors(values: dict[tuple[str, int], float]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for (c, sev), v in values.items():
        out.setdefault(c, {})[sev] = 1.0 - v
    return out
