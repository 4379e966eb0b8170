"""The leaderboard's per-cell helpers that read the store: a row's common value, an evaluation's test
size, the per-sample worst case, the failed sanity checks of a row's runs, the order of attack columns
(used by :mod:`natbench.leaderboard`), and the frame operations that join tables: several
metrics' frames into one, several threat models' tables into one for csv/json."""
from __future__ import annotations

import numpy as np
import pandas as pd

from natbench.errors import RunError

from .leaderboard_rows import KEY_COLS, META_COLS, SUFFIXES


def _one(values):
    """The common value of a row's runs (they differ in seed only; NaN/'' when unknown)."""
    vals = list(values)
    known = list(dict.fromkeys(v for v in vals if v == v and v != ""))
    if not known:
        return "" if vals and isinstance(vals[0], str) else np.nan
    return known[0] if len(known) == 1 else " ".join(map(str, known))


def _n_test(store, run_id: str, checkpoint: str, threat: str = "") -> int | None:
    """Test points of one evaluation: the length of its stored clean flags (None without flags)."""
    try:
        flags = store.flags(run_id, checkpoint, threat)
    except Exception:  # noqa: BLE001 - an old store without flags
        return None
    clean = flags.get("clean")
    return int(clean.shape[0]) if clean is not None and clean.shape[0] else None


def _worst_case(store, run_id: str, checkpoint: str, attacks: list[str], threat: str = "") -> float:
    """Percent of test samples correct on clean inputs AND under every one of ``attacks`` (the row's
    common suite attacks and the run's escalated ones; :meth:`Store.worst_case`); NaN without flags
    or with flags of different lengths."""
    try:
        return 100.0 * store.worst_case(run_id, checkpoint, attacks, threat)
    except (RunError, ValueError):
        return float("nan")


def _failed_checks(store, wide: pd.DataFrame, key: list[str], row: dict, bf16: set[str] = frozenset(),
                   threat_of=lambda run_id: "") -> str:
    """``"! name, name (docs/flags.md)"`` for the sanity checks any run of the row failed, plus
    ``bf16_eval`` when a run of the row was evaluated under bf16 autocast; else ''."""
    cols = {k: row[k] for k in key}
    runs = wide.loc[(wide[list(cols)] == pd.Series(cols)).all(axis=1), "run_id"].unique()
    failed: dict[str, None] = {}
    for run_id in runs:
        chk = store.checks(run_id, threat_of(run_id))
        chk = chk[(chk["checkpoint"] == cols["checkpoint"]) & ~chk["passed"]]
        failed.update(dict.fromkeys(chk["name"]))
    if bf16.intersection(runs):
        failed["bf16_eval"] = None
    return f"! {', '.join(failed)} (docs/flags.md)" if failed else ""


def _attack_order(suites: pd.Series, present: pd.Series) -> list[str]:
    """Attack columns: "clean" first, then the union of suites in first-seen order, then extras."""
    seen: dict[str, None] = {"clean": None}
    for suite in suites:
        seen.update(dict.fromkeys(suite))
    seen.update(dict.fromkeys(present))
    have = set(present)
    return [a for a in seen if a in have]


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Several tables (of :func:`tables`) as one frame for csv/json: rows one after another, their
    ``norm``/``eps`` columns naming each row's threat model, provenance columns last."""
    out = pd.concat(frames, ignore_index=True)
    tail = [c for c in ("flags", *META_COLS) if c in out.columns]
    out = out[[c for c in out.columns if c not in tail] + tail]
    out.attrs = dict(frames[0].attrs)
    return out


def _merge_metrics(frames: list[pd.DataFrame], metrics, threat_eps: str = "") -> pd.DataFrame:
    """One frame of several metrics' frames; the worst case is named by metric and eps
    (``worst-case rank1 @8/255``), so the header says which metric and which eps it is over."""
    fixed = (*KEY_COLS, "seeds", "flags", *META_COLS)
    key = [c for c in frames[0].columns if c in KEY_COLS]
    out = frames[0][[c for c in frames[0].columns if c in fixed]]
    bases = list(dict.fromkeys(c for f in frames for c in f.columns if c not in fixed and not c.endswith(SUFFIXES)))
    for base in bases:
        for m, f in zip(metrics, frames):
            if base.startswith("worst-case @"):
                name = f"worst-case {m} @{base.split('@', 1)[1]}"
            elif base == "worst-case" and threat_eps:
                name = f"worst-case {m} @{threat_eps}"
            else:
                name = f"{base} {m}"
            for sfx in ("", *SUFFIXES):
                if f"{base}{sfx}" in f.columns:
                    out = out.merge(f[key + [f"{base}{sfx}"]].rename(columns={f"{base}{sfx}": name + sfx}), on=key, how="left")
    tail = [c for c in ("flags", *META_COLS) if c in out.columns]
    return out[[c for c in out.columns if c not in tail] + tail]
