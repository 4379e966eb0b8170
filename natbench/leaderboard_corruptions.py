"""The ``corruptions`` leaderboard table of a task, apart from the adversarial tables.

Corruption results (ids ``corr-<corruption>-<severity>``, :mod:`natbench.attacks.corruption`) are not
adversarial: :func:`adversarial_only` keeps them out of the adversarial tables, so their ``avg`` and
``worst-case`` columns never include a corruption (docs/corruptions.md). This table has one row per
(defense, profile, variant, checkpoint) with corruption results: ``seeds``, ``entries`` (how many
(corruption, severity) entries every seed of the row ran), ``clean``, ``mean`` (over the entries),
``mCE`` (percent, relative to the baseline row; blank with ``mCE note`` saying why), one column per
corruption (its mean over the severities run), ``source`` and ``run_ids``. Values are percent of the
task's metric (accuracy; re-id: one table per metric, mAP and rank-1; detection: mAP), the mean over
the row's seeds entry by entry.

The baseline (mCE's denominator, AlexNet in ImageNet-C) is a named row: by default the same task's
``vanilla`` row with the same profile and checkpoint; ``baseline=RUN_ID`` takes that run's results at
the same checkpoint instead. Without one, mCE is blank and the note says so.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .corruption_suite import parse_id, summary, values_of

KEY = ["defense", "profile", "variant", "checkpoint"]


def is_corruption_id(aid: Any) -> bool:
    return parse_id(str(aid)) is not None


def adversarial_only(res: pd.DataFrame) -> pd.DataFrame:
    """The result rows of ``res`` (a frame with an ``attack`` column) that are not corruptions."""
    if res.empty:
        return res
    return res[~res["attack"].map(is_corruption_id)]


def _metrics(store: Any, task: str) -> tuple[str, ...]:
    from .leaderboard import task_metrics

    return task_metrics(store, task)


def _row_values(res: pd.DataFrame, metric: str) -> tuple[dict[tuple[str, int], float], int]:
    """Entry -> mean over the runs of ``res`` (one row's runs, one checkpoint), and how many entries
    every run has (an entry missing from a run is left out of the row: never averaged over fewer seeds)."""
    per_run = [values_of(g, metric) for _, g in res.groupby("run_id", sort=False)]
    common = set.intersection(*(set(v) for v in per_run)) if per_run else set()
    return {k: sum(v[k] for v in per_run) / len(per_run) for k in sorted(common)}, len(common)


def _source(res: pd.DataFrame) -> str:
    rows = res[res["attack"].map(is_corruption_id)]
    pub = rows[rows["metric"] == "published_set"]["value"]
    ver = rows[rows["metric"] == "imagecorruptions_version"]["value"]
    parts = []
    if (pub == 1).any():
        parts.append("published set")
    if len(ver):
        v = int(ver.iloc[0])
        parts.append(f"imagecorruptions {v // 10000}.{v // 100 % 100}.{v % 100}")
    return ", ".join(parts)


def table(store: Any, task: str, metric: str | None = None, *, baseline: str | None = None) -> pd.DataFrame:
    """The corruptions table of ``task`` for ``metric`` (default: the task's first leaderboard metric);
    an empty frame when the task has no corruption results."""
    from .corruptions import CORRUPTIONS

    metric = metric or _metrics(store, task)[0]
    res = store.results(task)
    if res.empty:
        return pd.DataFrame()
    corr_runs = set(res.loc[res["attack"].map(is_corruption_id), "run_id"])
    res = res[res["run_id"].isin(corr_runs)]
    if res.empty:
        return pd.DataFrame()
    rows, values = [], {}
    for key, grp in res.groupby(KEY, sort=False):
        vals, n = _row_values(grp, metric)
        if not n:
            continue
        clean = grp[(grp["attack"] == "clean") & (grp["metric"] == metric)]["value"]
        values[key] = vals
        rows.append({**dict(zip(KEY, key)), "seeds": grp["run_id"].nunique(), "entries": n,
                     "clean": 100 * clean.mean() if len(clean) else math.nan,
                     "source": _source(grp), "run_ids": " ".join(sorted(grp["run_id"].unique()))})
    out = []
    for row in rows:
        key = tuple(row[k] for k in KEY)
        base, label, why = _baseline(store, res, values, key, metric, baseline)
        s = summary(values[key], metric, base, label, why)
        cells = {"mean": 100 * s.mean, "mCE": s.mce, "mCE note": s.mce_note, "baseline": s.baseline}
        cells.update({c: 100 * s.per_corruption[c] if c in s.per_corruption else math.nan for c in CORRUPTIONS})
        out.append({**row, **cells})
    df = pd.DataFrame(out)
    if not df.empty:
        order = [*KEY, "seeds", "entries", "clean", "mean", "mCE", *CORRUPTIONS, "mCE note", "baseline", "source", "run_ids"]
        df = df[order].sort_values(["mean", "defense"], ascending=[False, True], kind="stable").reset_index(drop=True)
    df.attrs["metric"] = metric
    return df


def _baseline(store: Any, res: pd.DataFrame, values: dict, key: tuple, metric: str,
              run_id: str | None) -> tuple[dict | None, str, str]:
    """``(values, label, why-none)`` of the baseline for the row ``key``."""
    defense, profile, variant, ckpt = key
    if run_id is not None:
        mine = store.results()
        mine = mine[(mine["run_id"] == run_id) & (mine["checkpoint"] == ckpt)]
        if mine.empty:
            return None, "", f"baseline run {run_id} has no {ckpt} results"
        vals = values_of(mine, metric)
        return (vals, run_id, "") if vals else (None, "", f"baseline run {run_id} has no corruption results")
    for cand in ((("vanilla", profile, "", ckpt)), *(k for k in values if k[0] == "vanilla" and k[1] == profile and k[3] == ckpt)):
        if cand in values:
            return values[cand], f"vanilla ({profile}{', ' + cand[2] if cand[2] else ''}, {ckpt})", ""
    return None, "", f"no vanilla {profile} row with corruption results (name a baseline run)"


def render_rich(df: pd.DataFrame, task: str) -> list[Any]:
    """Two rich tables of :func:`table`'s frame (percent, one decimal; blank where missing): the rows'
    summary, then the per-corruption means with one column per row (15 columns do not fit a terminal)."""
    from rich.table import Table

    from .corruptions import CORRUPTIONS

    metric = df.attrs.get("metric", "accuracy")
    key = [c for c in KEY if c != "variant" or (df["variant"] != "").any()]
    head = Table(title=f"{task} — corruptions: {metric} (%), mean over the entries run, mCE vs the baseline (%)",
                 title_justify="left")
    cols = [*key, "seeds", "entries", "clean", "mean", "mCE"]
    for c in cols:
        head.add_column(c, justify="left" if c in KEY else "right", no_wrap=c in KEY)
    recs = df.to_dict("records")
    for r in recs:
        head.add_row(*[_cell(r[c]) for c in cols])
    per = Table(title=f"{task} — corruptions: {metric} (%) per corruption, mean over its severities", title_justify="left")
    per.add_column("corruption", no_wrap=True)
    for r in recs:
        per.add_column(" ".join(str(r[c]) for c in key if r[c] != "" and c != "profile"), justify="right")
    for c in CORRUPTIONS:
        per.add_row(c, *[_cell(r[c]) for r in recs])
    return [head, per]


def notes(df: pd.DataFrame) -> list[str]:
    """One line per row whose mCE is missing or partial (the reason), and the baseline used."""
    out = []
    for r in df.to_dict("records"):
        who = f"{r['defense']} {r['profile']} {r['checkpoint']}"
        if r["mCE note"]:
            out.append(f"{who}: mCE {r['mCE note']}")
        elif r["baseline"]:
            out.append(f"{who}: mCE relative to {r['baseline']}")
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.1f}"
    return str(v)


def print_tables(store: Any, task: str, fmt: str = "table", baseline: str | None = None) -> None:
    """Print the corruptions table(s) of ``task`` (one per metric) when it has corruption results."""
    import sys

    for m in _metrics(store, task):
        df = table(store, task, m, baseline=baseline)
        if df.empty:
            return
        if fmt == "table":
            from rich.console import Console

            console = Console()
            for t in render_rich(df, task):
                console.print(t)
            for line in notes(df):
                console.print(f"  {line}")
        elif fmt in ("md", "csv", "json"):
            sys.stdout.write(render(df, fmt, task))


def render(df: pd.DataFrame, fmt: str, task: str = "") -> str:
    """``df`` as md (percent, one decimal; titled with ``task``), csv or json (records) text."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=1) + "\n"
    from .leaderboard_render import pipe_table

    cols = list(df.columns)
    table_md = pipe_table(cols, [[_cell(r[c]) for c in cols] for r in df.to_dict("records")])
    title = f"## {task + ' — ' if task else ''}corruptions: {df.attrs.get('metric', 'accuracy')} (%)"
    return f"\n{title}\n\n" + table_md


def write(store: Any, out_dir: Any, task: str, baseline: str | None = None) -> list:
    """``<out_dir>/<task>-corruptions.{md,csv,json}`` (one metric: the task's first; re-id: mAP) when the
    task has corruption results, each file written atomically; the paths written."""
    from pathlib import Path

    from .leaderboard_render import write_files

    df = table(store, task, baseline=baseline)
    if df.empty:
        return []
    texts = {fmt: render(df, fmt, task) for fmt in ("md", "csv", "json")}  # all rendered before the first file
    return write_files({Path(out_dir) / f"{task}-corruptions.{fmt}": text for fmt, text in texts.items()})


def html_section(store: Any, task: str) -> list[str]:
    """The corruptions table (:func:`table`: accuracy per corruption, mean, mCE against the task's vanilla
    row) as a section of the leaderboard page; ``[]`` without corruption results."""
    from .analysis import html as H

    cdf = table(store, task)
    if cdf.empty:
        return []
    cols = [c for c in cdf.columns if c not in ("run_ids",)]
    rows = [[_cell(v) for v in rec] for rec in cdf[cols].itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(cdf[c]) for c in cols]
    metric = cdf.attrs.get("metric", "accuracy")
    return [f"<h2>Common corruptions: {H.esc(str(metric))} (%)</h2>",
            "<p>Per corruption the mean over its severities; <code>mean</code> over all entries run; "
            "<code>mCE</code> relative to the baseline row (docs/corruptions.md). Not part of any "
            "<code>avg</code> or worst case above.</p>",
            H.table(cols, rows, numeric=numeric, sortable=True),
            *(f"<p class=\"note\">{H.esc(n)}</p>" for n in notes(cdf))]
