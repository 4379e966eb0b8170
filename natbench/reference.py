"""Leaderboard rows that are not trained runs: outside models (``source`` external) and published numbers.

- :func:`mark_sources` (called by :func:`natbench.leaderboard.table`): when a task has external runs
  (``natbench eval --task T --model SPEC``, :mod:`natbench.external`), a ``source`` column says
  ``trained`` or ``external`` for every row and external rows show ``seeds`` as ``-`` (an outside
  model has no training seed); tables without external runs are unchanged.
- :func:`with_reference` (``natbench leaderboard --reference FILE``) adds the numbers a paper or
  RobustBench *claims* as rows with ``source`` ``reported``: never averaged or mixed with measured
  rows, each placed right after the measured row of the same model where natbench measured it.

A reference file holds RobustBench ``model_info`` records (``robustbench/model_info/<dataset>/<threat>/
<model>.json`` in the RobustBench repository): ``name``, ``clean_acc``, ``autoattack_acc``, ``eps``,
``architecture``, ``venue`` (accuracies in percent, as strings or numbers), optionally ``dataset`` and
``threat_model``. FILE is one such record, a list of them, an object mapping model names to them, or a
directory of ``<model>.json`` files. A record's model key is its ``model``/``id`` field, else its map
key or file stem, else its ``name``; it matches a measured row whose external run was
``robustbench:<key>``, or whose leaderboard name is the key or the record's ``name``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError

REQUIRED = ("name", "clean_acc", "autoattack_acc")


def mark_sources(df: pd.DataFrame, external_ids: set[str]) -> pd.DataFrame:
    """Add ``source`` (after ``defense``) and ``-`` seeds for rows whose runs are all external."""
    if not external_ids or "run_ids" not in df.columns or df.empty:
        return df
    ext = [bool(ids) and set(str(ids).split()) <= external_ids for ids in df["run_ids"]]
    if not any(ext):
        return df
    out = df.copy()
    out.insert(list(out.columns).index("defense") + 1, "source", ["external" if e else "trained" for e in ext])
    out["seeds"] = [("-" if e else int(s)) for e, s in zip(ext, out["seeds"])]
    out.attrs.update(df.attrs)
    return out


def _num(v: Any, where: str) -> float:
    try:
        return float(str(v).strip().rstrip("%"))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number (percent), got {v!r}") from None


def _eps(v: Any) -> float:
    try:
        from .config import parse_float

        return float(parse_float(v, "eps")) if v not in (None, "") else float("nan")
    except Exception:  # noqa: BLE001 - a free-text eps stays unknown
        return float("nan")


def load(path: str | Path) -> list[dict]:
    """The reference records of ``path`` (see the module docstring), each with a ``key``."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--reference {p}: no such file or directory")
    items: list[tuple[str, Any, str]] = []
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    if not files:
        raise ConfigError(f"--reference {p}: no .json files in this directory")
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--reference {f}: not JSON ({' '.join(str(e).split())})") from None
        if isinstance(data, list):
            items += [("", d, f"{f}[{i}]") for i, d in enumerate(data)]
        elif isinstance(data, dict) and "name" not in data and data and all(isinstance(v, dict) for v in data.values()):
            items += [(k, d, f"{f}:{k}") for k, d in data.items()]
        else:
            items.append((f.stem if p.is_dir() or f.stem != "reference" else "", data, str(f)))
    out = []
    for key, d, where in items:
        if not isinstance(d, dict) or any(k not in d for k in REQUIRED):
            raise ConfigError(f"--reference {where}: a record needs {', '.join(REQUIRED)} (RobustBench's model_info shape)")
        out.append({"key": str(d.get("model") or d.get("id") or key or d["name"]), "name": str(d["name"]),
                    "clean": _num(d["clean_acc"], f"{where}.clean_acc"),
                    "autoattack": _num(d["autoattack_acc"], f"{where}.autoattack_acc"), "eps": _eps(d.get("eps")),
                    "architecture": str(d.get("architecture", "")), "venue": str(d.get("venue", "")),
                    "dataset": str(d.get("dataset", "")), "threat_model": str(d.get("threat_model", ""))})
    return out


def _measured_keys(store: Any, df: pd.DataFrame) -> list[set[str]]:
    """For every row: the names a reference record may match (leaderboard name, external spec)."""
    keys = []
    for rec in df.to_dict("records"):
        names = {str(rec.get("defense", ""))}
        for rid in str(rec.get("run_ids", "") or "").split():
            run = store.get_run(rid)
            ext = (run.config or {}).get("external") if run is not None else None
            if isinstance(ext, dict) and str(ext.get("spec", "")).startswith("robustbench:"):
                names.add(ext["spec"].split(":", 1)[1])
        keys.append(names)
    return keys


def with_reference(df: pd.DataFrame, store: Any, records: list[dict], dataset: str | None = None) -> pd.DataFrame:
    """``df`` (a :func:`natbench.leaderboard.table` frame) with one ``reported`` row per record (of
    ``dataset`` where a record names one), after the measured row of the same model or at the end.
    The claimed AutoAttack accuracy goes into the table's AutoAttack column (the one it is sorted by),
    else into a column ``autoattack``; intervals, avg and worst-case stay empty."""
    recs = [r for r in records if (not dataset or not r["dataset"] or r["dataset"] == dataset) and _same_threat(r, df)]
    if not recs:
        return df
    sort_by = df.attrs.get("sort_by", "")
    aa_col = sort_by if sort_by and not sort_by.startswith(("worst-case", "avg", "clean")) else "autoattack"
    out = df.copy()
    if "source" not in out.columns:
        out.insert(list(out.columns).index("defense") + 1, "source", "trained")
        out["seeds"] = out["seeds"].astype(object)
    if aa_col not in out.columns:
        out[aa_col] = np.nan
    if "reference" not in out.columns:
        out["reference"] = ""
    measured = _measured_keys(store, df)
    rows: list[dict] = [dict(r) for r in out.to_dict("records")]
    after: dict[int, list[dict]] = {}
    for rec in recs:
        row = {c: (np.nan if pd.api.types.is_float_dtype(out[c]) else "") for c in out.columns}
        row.update(defense=rec["key"], source="reported", seeds="-", clean=rec["clean"], eps=rec["eps"],
                   reference=", ".join(x for x in (rec["name"], rec["venue"], rec["architecture"]) if x))
        row[aa_col] = rec["autoattack"]
        hits = [i for i, names in enumerate(measured) if rec["key"] in names or rec["name"] in names]
        after.setdefault(hits[-1] if hits else len(rows), []).append(row)
    merged: list[dict] = []
    for i, r in enumerate(rows):
        merged.append(r)
        merged += after.get(i, [])
    merged += after.get(len(rows), [])
    res = pd.DataFrame(merged, columns=out.columns)
    res.attrs.update(df.attrs)
    return res


def _same_threat(rec: dict, df: pd.DataFrame) -> bool:
    """A record goes into the table of its threat model (``df.attrs["threat"]``, one table per threat
    model): its ``threat_model`` (RobustBench's ``Linf``/``L2``; L-inf when it names none) and its eps
    (where both are known)."""
    table = df.attrs.get("threat")
    if not table:
        return True
    norm = {"linf": "linf", "l2": "l2", "l1": "l1"}.get(rec.get("threat_model", "").lower().replace("-", ""), "?")
    if not rec.get("threat_model"):
        norm = "linf"
    eps, t_eps = rec.get("eps", float("nan")), float(table[1])
    return norm == table[0] and (eps != eps or t_eps != t_eps or abs(eps - t_eps) <= 1e-9 * max(1.0, t_eps))


def apply(df: pd.DataFrame, store: Any, task: str, path: str | Path | None) -> pd.DataFrame:
    """``natbench leaderboard --reference PATH``: :func:`with_reference` for ``task``'s dataset."""
    if path is None:
        return df
    dataset = None
    runs = store.runs(task)
    if not runs.empty:
        run = store.get_run(runs["run_id"].iloc[-1])
        dataset = ((run.config or {}).get("task") or {}).get("data", {}).get("dataset") if run is not None else None
    return with_reference(df, store, load(path), dataset)
