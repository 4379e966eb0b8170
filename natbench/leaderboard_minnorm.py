"""The minimum-norm tables of a task: robust accuracy at several eps from one run of a minimum-norm
attack (``fmn``, ``cw-l2``; docs/minnorm.md), one table per norm, beside the threat-model tables.

A minimum-norm attack records, besides ``accuracy`` at the threat model's eps, ``accuracy@<e>`` for each
e of its ``eps_grid`` (a point counts as robust at e when it is clean-correct and its smallest
successful perturbation is larger than e) and ``median_norm``. This table has one row per (defense,
profile, variant, checkpoint, attack, the eps it was evaluated under) with such results: ``seeds``,
``clean``, one column ``@<e>`` per eps of the grid (percent, the mean over the row's seeds; blank where
a row's grid lacks it), ``median_norm`` (the mean over seeds of each run's median over its clean-correct
points; inf where an attack failed on half of them) and ``run_ids``. The norm is the one the attack ran
in: the run's own, or the one of ``natbench eval --threat-model``. Not part of any ``avg`` or worst case.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from natbench import threats

KEY = ["defense", "profile", "variant", "checkpoint", "attack", "eps"]
PREFIX = "accuracy@"


def tables(store: Any, task: str) -> list[pd.DataFrame]:
    """One frame per norm (L-inf, L2, L1) with minimum-norm results, ``attrs["norm"]`` naming it; ``[]``
    when the task has none."""
    from natbench.errors import RunError

    from . import leaderboard as L

    try:
        res, _, _ = L._runs(store, task, None)
    except RunError:
        return []
    grid = res[res["metric"].str.startswith(PREFIX) | (res["metric"] == "median_norm")]
    if grid.empty:
        return []
    clean = res[(res["attack"] == "clean") & (res["metric"] == "accuracy") & (res["threat"] == "")]
    clean = clean.groupby(["run_id", "checkpoint"])["value"].last()
    grid = grid.assign(norm=[t[0] for t in grid["_threat"]], eps=[t[1] for t in grid["_threat"]])
    out = []
    for norm in sorted(grid["norm"].unique(), key=lambda n: threats.order((n, 0.0))):
        frame = _table(grid[grid["norm"] == norm], clean)
        frame.attrs.update(norm=norm, title=f"minimum-norm attacks, {threats.title(norm)}")
        out.append(frame)
    return out


def _table(grid: pd.DataFrame, clean: pd.Series) -> pd.DataFrame:
    rows = []
    for key, grp in grid.groupby(KEY, sort=False):
        per_run = grp.pivot_table(index="run_id", columns="metric", values="value", aggfunc="last")
        runs = list(per_run.index)
        row = {**dict(zip(KEY, key)), "seeds": len(runs),
               "clean": 100 * pd.Series([clean.get((r, key[3]), math.nan) for r in runs]).mean()}
        for metric in per_run.columns:
            if metric.startswith(PREFIX):
                row["@" + metric[len(PREFIX):]] = 100 * per_run[metric].mean()
        if "median_norm" in per_run.columns:
            med = per_run["median_norm"]
            row["median_norm"] = math.inf if (med == math.inf).any() else med.mean()
        row["run_ids"] = " ".join(sorted(runs))
        rows.append(row)
    df = pd.DataFrame(rows)
    at = sorted((c for c in df.columns if c.startswith("@")), key=lambda c: float(c[1:]))
    order = [*KEY, "seeds", "clean", *at, *(["median_norm"] if "median_norm" in df.columns else []), "run_ids"]
    return df[order].sort_values(["attack", "defense", "checkpoint"], kind="stable").reset_index(drop=True)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else ("inf" if v == math.inf else f"{v:.2f}")
    return str(v)


def render(frames: list[pd.DataFrame], fmt: str, task: str = "") -> str:
    """md (a titled table per norm), csv or json (one row set, the ``norm`` column naming each row's)."""
    if fmt in ("csv", "json"):
        df = pd.concat([f.assign(norm=f.attrs["norm"]) for f in frames], ignore_index=True)
        return df.to_csv(index=False) if fmt == "csv" else df.to_json(orient="records", indent=1) + "\n"
    from .leaderboard_render import pipe_table

    parts = []
    for f in frames:
        cols = list(f.columns)
        table_md = pipe_table(cols, [[_cell(r[c]) for c in cols] for r in f.to_dict("records")])
        parts.append(f"\n## {task + ' — ' if task else ''}{f.attrs['title']}: accuracy (%) at each eps\n\n" + table_md)
    return "".join(parts)


def print_tables(store: Any, task: str, fmt: str = "table") -> None:
    """Print the minimum-norm tables of ``task`` when it has such results."""
    import sys

    frames = tables(store, task)
    if not frames:
        return
    if fmt in ("md", "csv", "json"):
        sys.stdout.write(render(frames, fmt, task))
        return
    if fmt != "table":
        return
    from rich.console import Console
    from rich.table import Table

    from .leaderboard_rows import eps_text

    console = Console()
    for f in frames:  # one column per row (a grid of eps does not fit a terminal's width as columns)
        t = Table(title=f"{task} — {f.attrs['title']}: accuracy (%) at each eps from one run (docs/minnorm.md)",
                  title_justify="left")
        t.add_column("", no_wrap=True)
        variants, recs = [], f.to_dict("records")
        for r in recs:
            mark = ""
            if r["variant"]:
                variants.append(f"[{len(variants) + 1}] variant {r['variant']}")
                mark = f" [{len(variants)}]"
            t.add_column(f"{r['defense']} {r['profile']} {r['checkpoint']}{mark} {r['attack']} (eps {eps_text(r['eps'])})",
                         justify="right")
        t.add_row("seeds", *[str(r["seeds"]) for r in recs])
        for c in ("clean", *(c for c in f.columns if c.startswith("@") or c == "median_norm")):
            t.add_row(c, *[_cell(r[c]) for r in recs])
        console.print(t)
        for line in variants:
            console.print(f"  {line}")


def write(store: Any, out_dir: Any, task: str) -> list:
    """``<out_dir>/<task>-minnorm.{md,csv,json}`` when the task has minimum-norm results (each written
    atomically, all rendered first); the paths written."""
    from pathlib import Path

    from .leaderboard_render import write_files

    frames = tables(store, task)
    if not frames:
        return []
    texts = {fmt: render(frames, fmt, task) for fmt in ("md", "csv", "json")}
    return write_files({Path(out_dir) / f"{task}-minnorm.{fmt}": text for fmt, text in texts.items()})


def html_section(store: Any, task: str) -> list[str]:
    """The leaderboard page's section: one table per norm; ``[]`` without minimum-norm results."""
    from .analysis import html as H

    parts = []
    for f in tables(store, task):
        cols = list(f.columns)
        rows = [[_cell(v) for v in rec] for rec in f.itertuples(index=False)]
        numeric = [pd.api.types.is_numeric_dtype(f[c]) for c in cols]
        parts += [f"<h2>Minimum-norm attacks — {H.esc(threats.title(f.attrs['norm']))}</h2>",
                  "<p>Accuracy (%) at each eps of the attack's grid from one run (a point is robust at e when "
                  "clean-correct and its smallest successful perturbation exceeds e); <code>median_norm</code> over "
                  "the clean-correct points (docs/minnorm.md). Not part of any <code>avg</code> or worst case.</p>",
                  H.table(cols, rows, numeric=numeric, sortable=True)]
    return parts
