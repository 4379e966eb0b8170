"""What a leaderboard row is: the identity of a run (everything that changes its numbers except the
seed), the variant text that says how it differs from the built-in task, the threat model and recipe a
row was measured under, and 95 % intervals of its cells.

A row of :func:`natbench.leaderboard.table` aggregates only runs whose :func:`identity` is equal, that
is runs that differ in seed alone. Two runs of ``task: digits`` whose specs differ in ``eps`` (a spec
file of one's own that ``include:``s ``digits.yaml``) have different identities and so different rows;
:func:`describe` names what differs from the registered ``digits`` spec (``threat_model.eps=0.1``) and
that text is the row's ``variant``.

Intervals (docs/leaderboard.md): :func:`wilson` for a proportion of test points, :func:`interval`
combines it with the spread over seeds.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

#: the row key: runs of a row differ in seed only (the hidden ``_ident`` makes sure of it)
KEY_COLS = ("defense", "profile", "variant", "trained", "checkpoint")  # trained: only in a table of another threat model
#: per-row provenance columns (csv/json; the html page shows them in their own table); ``norm``/``eps``:
#: the threat model the row was evaluated under (its table's)
META_COLS = ("norm", "eps", "epochs", "n_test", "natbench", "suite", "run_ids")  # suite: only when rows differ in it
#: suffixes of a value column's companions: 95 % interval bounds and the std over seeds
SUFFIXES = ("_lo", "_hi", "_std")
#: result ids of the attacks natbench adds when a sanity check fails (natbench.checks.ESCALATIONS)
ESCALATED_PREFIX = "escalated-"
#: config keys that never change a number (presentation only); left out of a row's identity
_COSMETIC = (("task", "description"),)
#: z of a two-sided 95 % interval
Z95 = 1.959963984540054


@dataclass
class RunInfo:
    """What the leaderboard needs to know of one run beyond its results."""

    ident: str  # hash of the config without seed and suite: equal for runs that differ in seed only
    variant: str  # what differs from the registered task (or the stored --set variant)
    norm: str = ""
    eps: float = float("nan")
    epochs: float = float("nan")
    version: str = ""
    suite: tuple[str, ...] = ()  # attack ids of the run's suite as configured (not later evaluations)
    suite_name: str = ""  # the configured suite's name (a profile's light default, e.g. cifar10 quick -> smoke)
    suite_attacks: dict[str, str] = field(default_factory=dict)  # attack id -> attack registry name
    attack_eps: dict[str, float] = field(default_factory=dict)  # attack id -> its eps (params, else threat model)


def identity(config: dict) -> str:
    """Hash of a run's resolved config without its seed, its suite (what is evaluated, not what is
    trained), the performance knobs that are not hashed and the cosmetic fields: runs with equal
    identity differ in seed only."""
    from .config import config_hash
    from .resolve import NOT_HASHED

    cfg = copy.deepcopy({k: v for k, v in (config or {}).items() if k not in ("seed", "suite")})
    for path in (*NOT_HASHED, *_COSMETIC):
        parent = cfg
        for key in path[:-1]:
            parent = parent.get(key, {}) if isinstance(parent, dict) else {}
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    for section, key in (("task", "params"), ("training", "sets")):  # absent when empty (old stores)
        if isinstance(cfg.get(section), dict) and not cfg[section].get(key):
            cfg[section].pop(key, None)
    return config_hash(cfg)[:12]


class Describer:
    """:meth:`variant` of a run against its registered task, resolved once per (task, defense, profile)."""

    def __init__(self) -> None:
        self._builtin: dict[tuple[str, str, str], dict | None] = {}

    def _resolved(self, task: str, defense: str, profile: str) -> dict | None:
        key = (task, defense, profile)
        if key not in self._builtin:
            try:
                from .registry import get_registry
                from .resolve import resolve

                self._builtin[key] = resolve(get_registry(), task, defense, profile=profile).config
            except Exception:  # noqa: BLE001 - not a registered task (a spec file's own name), a gone plugin
                self._builtin[key] = None
        return self._builtin[key]

    def variant(self, task: str, defense: str, profile: str, config: dict, stored: str) -> str:
        """The keys (``--set`` short form) whose values in ``config`` differ from the registered task
        ``task`` resolved for ``defense`` and ``profile``, e.g. ``threat_model.eps=0.1 training.epochs=4``.
        Keys the run's config lacks (stores written before a field existed) are not differences.
        Without a registered task or a stored config: ``stored`` (the run's own ``--set`` variant)."""
        builtin = self._resolved(task, defense, profile) if config else None
        if builtin is None:
            return stored
        from .resolve import variant_of

        have = _flat_keys(config)
        base = copy.deepcopy(builtin)
        _drop_missing(base, have)
        for path in _COSMETIC:
            base.get(path[0], {}).pop(path[1], None)
        cfg = copy.deepcopy(config)
        for path in _COSMETIC:
            cfg.get(path[0], {}).pop(path[1], None)
        return variant_of(base, cfg)


def _flat_keys(d, prefix: str = "") -> set[str]:
    if isinstance(d, dict) and d:
        return set().union(*(_flat_keys(v, f"{prefix}{k}.") for k, v in d.items()))
    return {prefix[:-1]}


def _drop_missing(d: dict, have: set[str], prefix: str = "") -> None:
    """Remove from ``d`` the leaves whose dotted key is not in ``have`` (nor a parent of one)."""
    for k in list(d):
        path = f"{prefix}{k}"
        if isinstance(d[k], dict) and d[k]:
            _drop_missing(d[k], have, path + ".")
            if not d[k] and path not in have:
                del d[k]
        elif path not in have:
            del d[k]


def run_info(store, runs, describer: Describer | None = None) -> dict[str, RunInfo]:
    """:class:`RunInfo` of every run of ``runs`` (a :meth:`Store.runs` frame), by run id."""
    from .config import ConfigError, parse_float

    describer = describer or Describer()
    out: dict[str, RunInfo] = {}
    for rec in runs.to_dict("records"):
        try:
            run = store.get_run(rec["run_id"])
            config = (run.config if run is not None else None) or {}
        except Exception:  # noqa: BLE001 - an unreadable config blob: the run is its own row
            config = {}
        task = config.get("task") if isinstance(config.get("task"), dict) else {}
        threat = task.get("threat_model") if isinstance(task.get("threat_model"), dict) else {}
        eps = _num(threat.get("eps"))
        suite_cfg = config.get("suite") if isinstance(config.get("suite"), dict) else {}
        attacks = [a for a in suite_cfg.get("attacks", []) if isinstance(a, dict) and a.get("id")]
        attack_eps = {}
        for a in attacks:
            value = (a.get("params") or {}).get("eps")
            try:
                attack_eps[a["id"]] = parse_float(value, f"suite.{a['id']}.params.eps") if value is not None else eps
            except ConfigError:
                attack_eps[a["id"]] = eps
        versions = rec.get("versions") if isinstance(rec.get("versions"), dict) else {}
        out[rec["run_id"]] = RunInfo(
            ident=identity(config),  # {} (a hand-filled store): one identity, rows by the stored keys
            variant=describer.variant(rec["task"], rec["defense"], rec["profile"], config, rec.get("variant", "") or ""),
            norm=str(threat.get("norm", "")), eps=eps,
            epochs=_num((config.get("training") or {}).get("epochs") if isinstance(config.get("training"), dict) else None),
            version=str(versions.get("natbench", "")),
            suite=tuple(a["id"] for a in attacks), suite_name=str(suite_cfg.get("suite", "") or ""),
            suite_attacks={a["id"]: str(a.get("attack", "")) for a in attacks},
            attack_eps=attack_eps,
        )
    return out


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def eps_text(eps: float) -> str:
    """The shortest decimal when it is short (``0.2``), else ``8/255`` for multiples of 1/255 (as the
    papers write them), else the decimal."""
    if eps != eps:
        return "?"
    if len(f"{eps:g}") <= 5:
        return f"{eps:g}"
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


# -- intervals ------------------------------------------------------------------------------------


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` points (fractions in [0, 1]).

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` (Wilson 1927); equal to
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` for ``p = k/n``."""
    if n <= 0 or p != p:
        return float("nan"), float("nan")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def t95(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def interval(values: list[float], n: int | None, proportion: bool) -> tuple[float, float]:
    """95 % interval of a cell (percent) from the per-seed ``values`` (percent).

    - test-set term: with ``proportion`` and ``n`` test points, the Wilson interval of the mean
      ``m`` over seeds, ``[wl, wh]`` (every seed is measured on the same ``n`` points, so this term
      does not shrink with seeds);
    - seed term: with k >= 2 seeds, ``e = t(0.975, k-1) · s / sqrt(k)`` (s: sample std over seeds);
    - combined: ``[m - sqrt((m-wl)² + e²), m + sqrt((wh-m)² + e²)]``, clipped to [0, 100].

    Without a test-set term (mAP, averages) the interval is ``m ± e`` (NaN with one seed); without
    either, ``(nan, nan)``."""
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    k = len(vals)
    e = 0.0
    if k >= 2:
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (k - 1))
        e = t95(k - 1) * s / math.sqrt(k)
    if proportion and n:
        wl, wh = (100.0 * b for b in wilson(m / 100.0, int(n)))
        lo, hi = m - math.hypot(m - wl, e), m + math.hypot(wh - m, e)
    elif k >= 2:
        lo, hi = m - e, m + e
    else:
        return float("nan"), float("nan")
    return max(0.0, lo), min(100.0, hi)
