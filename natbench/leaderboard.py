"""Leaderboards, generated from the store and never edited by hand.

:func:`table` pivots a task's results into one row per (defense, checkpoint): ``seeds``, ``clean``,
every attack in suite order, and ``avg`` — the NAT paper's "Avg." column, the mean of the clean and
attacked accuracies of a run, averaged over seeds. Values are percent. With several seeds per row a
parallel ``<col>_std`` column holds the sample standard deviation (ddof=1).

:func:`render` turns such a frame into md / csv / json / html (a bare table); :func:`html_page` makes
the full self-contained leaderboard page (sortable table, clean-vs-robust scatter, cost of each row,
flags); :func:`write` writes ``<out_dir>/<task>.{md,csv,json}`` (and ``.html`` when asked) atomically.
No printing here: the CLI renders.
"""
from __future__ import annotations

import html
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from natbench.errors import ConfigError, RunError

log = logging.getLogger(__name__)

FORMATS = ("md", "csv", "json", "html")
#: what :func:`write` (and ``natbench leaderboard --write``) writes by default; ``--format html --write``
#: adds ``html`` (:data:`WRITE_FORMATS_HTML`)
_WRITE_FORMATS = ("md", "csv", "json")
WRITE_FORMATS_HTML = (*_WRITE_FORMATS, "html")
_CHECKPOINT_ORDER = {"best": 0, "last": 1}
_KEY = ["defense", "checkpoint"]
#: result ids of the attacks natbench adds when a sanity check fails (natbench.checks.ESCALATIONS)
ESCALATED_PREFIX = "escalated-"


def tasks(store) -> list[str]:
    """Tasks that have at least one complete run with results, sorted by name."""
    return sorted(store.results()["task"].unique().tolist())


#: metrics whose per-sample flags are what the store's flags hold (correct / rank-1 correct): the
#: ``worst-case`` column goes with them
FLAG_METRICS = ("accuracy", "rank1")


def task_metrics(store, task: str) -> tuple[str, ...]:
    """The metrics a task's leaderboard shows: its task kind's ``LEADERBOARD_METRICS`` (re-id: mAP and
    rank-1) or ``headline_metric``; ``("accuracy",)`` when the kind is unknown."""
    runs = store.runs(task)
    if runs.empty:
        return ("accuracy",)
    try:
        from .registry import get_registry

        kind = store.get_run(runs["run_id"].iloc[-1]).config["task"]["kind"]
        cls = get_registry().load("task_kinds", kind)
    except Exception:  # noqa: BLE001 - an old store or a plugin kind that is gone: plain accuracy
        return ("accuracy",)
    return tuple(getattr(cls, "LEADERBOARD_METRICS", (getattr(cls, "headline_metric", "accuracy"),)))


def table(store, task: str, metric: str | None = None, *, profile: str | None = None) -> pd.DataFrame:
    """The leaderboard of ``task`` for ``metric`` (default: :func:`task_metrics`). With several
    metrics (re-id's mAP and rank-1) every value column appears once per metric, named
    ``"<column> <metric>"`` (``clean mAP``, ``clean rank1``, ``sma-8 mAP``, ...), attack by attack."""
    metrics = (metric,) if metric else task_metrics(store, task)
    frames = [_table(store, task, m, profile=profile) for m in metrics]
    if len(frames) == 1:
        return frames[0]
    fixed = ("defense", "profile", "variant", "checkpoint", "seeds", "flags")
    key = [c for c in frames[0].columns if c in fixed and c != "flags"]
    out = frames[0][key + (["flags"] if "flags" in frames[0].columns else [])]
    bases = list(dict.fromkeys(c for f in frames for c in f.columns if c not in fixed and not c.endswith("_std")))
    for base in bases:
        for m, f in zip(metrics, frames):
            for col in (base, f"{base}_std"):
                if col in f.columns:
                    name = f"{base} {m}" + ("_std" if col.endswith("_std") else "")
                    out = out.merge(f[key + [col]].rename(columns={col: name}), on=key, how="left")
    cols = [c for c in out.columns if c != "flags"] + (["flags"] if "flags" in out.columns else [])
    out = out[cols]
    out.attrs.update(task=task, metric="/".join(metrics))
    return out


def _table(
    store, task: str, metric: str = "accuracy", *, profile: str | None = None
) -> pd.DataFrame:
    """One row per (defense, checkpoint) of ``task``: seeds, clean, attacks in suite order, avg.

    Values are ``metric * 100`` rounded to 2 decimals; with several seeds in any row each value
    column is the mean over seeds and ``<col>_std`` the sample std (ddof=1). ``profile`` keeps one
    recipe profile; when it is ``None`` and the task has runs of several profiles, a ``profile``
    column is added after ``defense`` so runs of different recipes are never averaged together.
    A row only shows the suite attacks that *every* run of it was evaluated with (an attack added
    to one seed with ``natbench eval`` is blank in a multi-seed row), so ``avg`` (clean and the suite
    attacks, not the escalated ones) and ``worst-case`` never mix suites. With clean plus two or
    more attacks, ``worst-case`` is the per-sample worst case: the percentage of test samples
    correct on clean inputs and under every attack shown for the run, escalated ones (the stronger
    attacks a failed sanity check scheduled, ``escalated-*``) included (from the stored flags). ``flags`` names the sanity checks (``natbench.checks``) any run of the row failed,
    pointing at ``docs/flags.md``; the column is there only when some row failed a check.
    Likewise a ``variant`` column (the run's ``--set`` values that differ from the spec, e.g.
    ``nat.omega=0.06``) appears when any run has one: a sweep gives one row per value.
    Re-runs of an identical config (same config hash) count once: the newest is kept.
    """
    res = store.results(task)
    if res.empty:
        raise RunError(f"No results for task '{task}' in {store.path}. "
                       f"Run: natbench run --task {task} --defense vanilla")
    runs = store.runs(task)
    runs = runs[runs["run_id"].isin(res["run_id"])]
    if profile is not None:
        runs = runs[runs["profile"] == profile]
        if runs.empty:
            raise RunError(f"No results for task '{task}' with profile '{profile}' in {store.path}. "
                           f"Run: natbench run --task {task} --defense vanilla --profile {profile}")
    runs = (runs.sort_values(["finished", "run_id"])
            .drop_duplicates("config_hash", keep="last"))
    res = res[res["run_id"].isin(runs["run_id"])]
    sel = res[res["metric"] == metric]
    if sel.empty:
        raise RunError(f"No '{metric}' results for task '{task}' in {store.path}. "
                       f"Available metrics: {', '.join(sorted(res['metric'].unique()))}")
    key = ["defense", "profile", "checkpoint"] if runs["profile"].nunique() > 1 else list(_KEY)
    if (runs["variant"] != "").any():  # runs with --set values are separate rows (a sweep: one row per value)
        key.insert(key.index("checkpoint"), "variant")

    attacks = _attack_order(runs["suite"], sel["attack"])
    escalated = [a for a in attacks if a.startswith(ESCALATED_PREFIX)]
    suite_cols = [a for a in attacks if a not in escalated]
    # one row per (run, checkpoint), one column per attack, in percent
    wide = sel.set_index(["run_id", *key, "attack"])["value"].unstack("attack")
    wide = wide.reindex(columns=attacks) * 100.0
    wide.columns.name = None
    wide = wide.reset_index()
    # A row compares like with like: a suite attack that only some of its runs were evaluated with
    # (e.g. AutoAttack added to one seed by natbench eval) is left out of the whole row.
    for idx in wide.groupby(key, sort=False, dropna=False).groups.values():
        cells = wide.loc[idx, suite_cols]
        wide.loc[idx, [c for c in suite_cols if cells[c].isna().any() and cells[c].notna().any()]] = np.nan
    wide["avg"] = wide[suite_cols].mean(axis=1, skipna=True)  # the paper's Avg.: clean and the suite's attacks
    value_cols = [*attacks, "avg"]
    if metric in FLAG_METRICS and len(attacks) > 2:  # clean + at least two attacks: a worst case says more
        worst = [_worst_case(store, r["run_id"], r["checkpoint"], [a for a in attacks if r[a] == r[a]])
                 for r in wide.to_dict("records")]
        if any(w == w for w in worst):  # only when per-sample flags were stored
            wide["worst-case"] = worst
            value_cols.append("worst-case")

    grouped = wide.groupby(key, sort=False, dropna=False)
    out = grouped["run_id"].nunique().rename("seeds").to_frame()
    mean = grouped[value_cols].mean()
    std = grouped[value_cols].std(ddof=1)
    several = bool((out["seeds"] > 1).any())
    for col in value_cols:
        out[col] = mean[col]
        if several:
            out[f"{col}_std"] = std[col]
    out = out.reset_index()
    out["seeds"] = out["seeds"].astype(int)
    bf16 = set(res.loc[(res["metric"] == "bf16_autocast") & (res["value"] > 0), "run_id"])
    flags = [_failed_checks(store, wide, key, row, bf16) for row in out.itertuples(index=False)]
    if any(flags):  # a column only when some row carries a warning
        out["flags"] = flags
    out = out.sort_values(key, key=_sort_key, kind="stable").reset_index(drop=True)
    num = [c for c in out.columns if c not in (*key, "seeds", "flags")]
    out[num] = out[num].astype(float).round(2)
    out.attrs.update(task=task, metric=metric)
    return out


def render(df: pd.DataFrame, fmt: str) -> str:
    """Render a :func:`table` frame as ``md``, ``csv``, ``json`` or ``html`` text.

    md is a GitHub pipe table with ``mean ± std`` cells where ``_std`` columns exist; csv is
    ``df.to_csv(index=False)`` (std as separate columns); json a list of records (NaN -> null);
    html a small standalone page. Missing values are left empty.
    """
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = [{k: _jsonable(v) for k, v in rec.items()} for rec in df.to_dict("records")]
        return json.dumps(records, indent=2) + "\n"
    if fmt == "md":
        header, rows, numeric = _cells(df)
        line = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"  # noqa: E731
        rule = "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"
        return "\n".join([line(header), rule, *map(line, rows)]) + "\n"
    if fmt == "html":
        header, rows, numeric = _cells(df)
        title = "natbench leaderboard"
        if df.attrs.get("task"):
            title += f": {df.attrs['task']} ({df.attrs.get('metric', 'accuracy')}, %)"
        th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "\n".join(
            "<tr>" + "".join(f'<td class="{"num" if n else "txt"}">{html.escape(c)}</td>'
                             for c, n in zip(r, numeric)) + "</tr>" for r in rows)
        return (
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>\n<style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:2px 8px}td.num{text-align:right}"
            f"</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
            "</body></html>\n"
        )
    raise ConfigError(f"Unknown leaderboard format '{fmt}'. Available: {', '.join(FORMATS)}")


def write(store, out_dir: Path, task: str | None = None, formats: tuple[str, ...] = _WRITE_FORMATS) -> list[Path]:
    """Write ``<out_dir>/<task>.<fmt>`` for every task (or just ``task``) and every format of
    ``formats`` (default md, csv, json; ``"html"`` adds the page of :func:`html_page`); return the paths.

    Each file is written atomically (temporary file in ``out_dir`` + ``os.replace``).
    """
    unknown_fmt = [f for f in formats if f not in FORMATS]
    if unknown_fmt:
        raise ConfigError(f"Unknown leaderboard format '{unknown_fmt[0]}'. Available: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    names = [task] if task is not None else tasks(store)
    if not names:
        raise RunError(f"No results in {store.path}. Run: natbench run --task digits --defense vanilla")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name in names:
        df = table(store, name)
        for fmt in formats:
            text = html_page(store, name, df) if fmt == "html" else render(df, fmt)
            if fmt == "md":
                text = (f"# {name} ({df.attrs['metric']}, %)\n\n"
                        "<!-- Generated by `natbench leaderboard --write`; do not edit by hand. -->"
                        f"\n\n{text}")
            path = out_dir / f"{name}.{fmt}"
            _atomic_write(path, text)
            paths.append(path)
    log.info("wrote %d leaderboard files to %s", len(paths), out_dir)
    return paths


# -- helpers --------------------------------------------------------------------------------------


def _worst_case(store, run_id: str, checkpoint: str, attacks: list[str]) -> float:
    """Percent of test samples correct on clean inputs AND under every one of ``attacks`` (the row's
    common suite attacks and the run's escalated ones; :meth:`Store.worst_case`); NaN without flags
    or with flags of different lengths."""
    try:
        return 100.0 * store.worst_case(run_id, checkpoint, attacks)
    except (RunError, ValueError):
        return float("nan")


def _failed_checks(store, wide: pd.DataFrame, key: list[str], row, bf16: set[str] = frozenset()) -> str:
    """``"! name, name (docs/flags.md)"`` for the sanity checks any run of the row failed, plus
    ``bf16_eval`` when a run of the row was evaluated under bf16 autocast; else ''."""
    cols = dict(zip(key, [getattr(row, k) for k in key]))
    runs = wide.loc[(wide[list(cols)] == pd.Series(cols)).all(axis=1), "run_id"].unique()
    failed: dict[str, None] = {}
    for run_id in runs:
        chk = store.checks(run_id)
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


def _sort_key(col: pd.Series) -> pd.Series:
    """Sort "best" before "last" (others after, alphabetically); other keys alphabetically."""
    if col.name == "checkpoint":
        return col.map(lambda c: f"{_CHECKPOINT_ORDER.get(c, 2)}{c}")
    return col


def _cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, formatted rows and numeric-column flags; ``x`` + ``x_std`` become ``mean ± std``."""
    cols = [c for c in df.columns if not (str(c).endswith("_std") and str(c)[:-4] in df.columns)]
    rows = []
    for rec in df.to_dict("records"):
        row = []
        for c in cols:
            v, s = rec[c], rec.get(f"{c}_std")
            cell = _fmt(v)
            if cell and s is not None and not _isnan(s):
                cell += f" ± {float(s):.2f}"
            row.append(cell)
        rows.append(row)
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in cols]
    return [str(c) for c in cols], rows, numeric


def _fmt(v) -> str:
    if v is None or _isnan(v):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.2f}"
    return str(v)


def _isnan(v) -> bool:
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def _jsonable(v):
    if _isnan(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the html page --------------------------------------------------------------------------------

_KEY_COLS = ("defense", "profile", "variant", "checkpoint", "seeds", "flags")


def _row_key_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in ("defense", "profile", "variant") if c in df.columns]


def _point_columns(df: pd.DataFrame) -> tuple[str, str | None, list[str], str]:
    """``(clean column, worst-case column or None, attack columns in order, metric)`` of a table frame.
    With several metrics (re-id) the metric that has a worst-case column is used (rank-1), else the first."""
    metrics = str(df.attrs.get("metric", "accuracy")).split("/")
    values = [c for c in df.columns if c not in _KEY_COLS and not str(c).endswith("_std")]
    if len(metrics) == 1:
        m, suffix = metrics[0], ""
    else:
        m = next((mm for mm in metrics if f"worst-case {mm}" in df.columns), metrics[0])
        suffix = f" {m}"
    mine = [c for c in values if len(metrics) == 1 or str(c).endswith(suffix)]
    clean = f"clean{suffix}"
    worst = f"worst-case{suffix}" if f"worst-case{suffix}" in df.columns else None
    attacks = [c for c in mine if c not in (clean, f"avg{suffix}", f"worst-case{suffix}")
               and not str(c).startswith(ESCALATED_PREFIX)]
    return clean, worst, attacks, m


def scatter_points(df: pd.DataFrame) -> tuple[list[dict], str, str]:
    """One point per table row: clean (x) against robust (y) with the std over seeds as error bars.
    Robust is the row's ``worst-case`` column when it has a value, else its last attack column with a
    value. Returns ``(points, x label, caption text saying which column each point uses)``."""
    clean, worst, attacks, m = _point_columns(df)
    points, used = [], {}
    for rec in df.to_dict("records"):
        x = rec.get(clean)
        col = worst if worst is not None and not _isnan(rec.get(worst)) and rec.get(worst) is not None else None
        if col is None:
            col = next((a for a in reversed(attacks) if rec.get(a) is not None and not _isnan(rec.get(a))), None)
        if col is None or x is None or _isnan(x):
            continue
        label = " ".join(str(rec[k]) for k in _row_key_cols(df) if rec.get(k) not in (None, "")) or "?"
        points.append({"label": label, "checkpoint": str(rec.get("checkpoint", "")), "x": float(x), "y": float(rec[col]),
                       "xerr": _std(rec.get(f"{clean}_std")), "yerr": _std(rec.get(f"{col}_std")), "column": col})
        used.setdefault(col, []).append(f"{label} ({rec.get('checkpoint', '')})")
    parts = []
    for col, rows in used.items():
        what = "the per-sample worst case over clean and every attack of the run" if col == worst else "the last attack of the row's suite"
        parts.append(f"'{col}' ({what}) for {len(rows)} row(s)" + ("" if len(used) == 1 else ": " + ", ".join(rows)))
    caption = (f"Robust = {'; '.join(parts) or 'nothing to plot'}. Error bars: sample standard deviation over seeds "
               f"(none with one seed). Filled circles: best checkpoint; open squares: last.")
    return points, f"{clean} ({m}, %)", caption


def _std(v) -> float:
    return 0.0 if v is None or _isnan(v) else float(v)


def cost_rows(store, task: str, df: pd.DataFrame) -> tuple[list[str], list[list[str]], dict[str, dict]]:
    """The cost of each row of the leaderboard (one line per defense/profile/variant, both checkpoints
    share it): seeds, training and evaluation wall time (mean, min-max over seeds, from the store's
    runs), device(s), and the *estimated* attack budget per image summed over the row's suite
    (:mod:`natbench.analysis.budget`). Also returns ``{attack id: {"attack", "params", "budget"}}``."""
    from .analysis.budget import attack_budget
    from .checks import ESCALATIONS

    runs = store.runs(task)
    res = store.results(task)
    runs = runs[runs["run_id"].isin(res["run_id"])].sort_values(["finished", "run_id"]).drop_duplicates("config_hash", keep="last")
    keys = _row_key_cols(df)
    per_attack: dict[str, dict] = {}
    escalated = {aid: (name, params) for entries in ESCALATIONS.values() for aid, name, params in entries}
    header = [*keys, "seeds", "train s (mean)", "train s (min-max)", "eval s (mean)", "device",
              "attack budget per image (estimated)"]
    rows = []
    if runs.empty:
        return header, rows, per_attack
    if "variant" not in runs.columns:
        runs = runs.assign(variant="")
    seen = df[keys].drop_duplicates().to_dict("records") if keys else [{}]
    for key in seen:
        sel = runs
        for k, v in key.items():
            sel = sel[sel[k] == v]
        if sel.empty:
            continue
        fwd = bwd = sur = 0.0
        known = True
        suite_cfg = {}
        try:
            cfg = store.get_run(sel["run_id"].iloc[-1]).config or {}
            suite_cfg = {a["id"]: a for a in cfg.get("suite", {}).get("attacks", [])}
        except Exception:  # noqa: BLE001 - an old store or a hand-filled one: no suite config
            suite_cfg = {}
        present = set(res.loc[res["run_id"].isin(sel["run_id"]), "attack"]) - {"clean"}
        order = {a: i for i, a in enumerate(suite_cfg)}
        attacks = sorted(present, key=lambda a: (a.startswith(ESCALATED_PREFIX), order.get(a, len(order)), a))
        for aid in attacks:
            if aid in suite_cfg:
                name, params = suite_cfg[aid].get("attack", ""), suite_cfg[aid].get("params") or {}
            elif aid in escalated:
                name, params = escalated[aid]
                if name == "pgd":
                    params = {**params, "steps": max([int((a.get("params") or {}).get("steps", 0)) for a in suite_cfg.values()
                                                      if a.get("attack") == "pgd"] or [20])}
            else:
                known = False
                continue
            b = attack_budget(name, params)
            per_attack.setdefault(aid, {"attack": name, "params": params, "budget": b})
            fwd, bwd, sur = fwd + b.forward, bwd + b.backward, sur + b.surrogate_backward
        budget = (f"{fwd:g} fwd / {bwd:g} bwd" + (f" (+{sur:g} bwd on surrogates)" if sur else "")
                  + ("" if known else " (some attacks unknown)")) if attacks and (known or fwd) else ("n/a" if attacks else "")
        tr, ev = sel["wall_train_s"].astype(float), sel["wall_eval_s"].astype(float)
        rows.append([*(str(key[k]) for k in keys), str(len(sel)), f"{tr.mean():.1f}", f"{tr.min():.1f}-{tr.max():.1f}",
                     f"{ev.mean():.1f}", ", ".join(sorted(set(sel["device"]))), budget])
    return header, rows, per_attack


def html_page(store, task: str, df: pd.DataFrame | None = None) -> str:
    """The self-contained leaderboard page of ``task``: the table (click a header to sort), a
    clean-vs-robust scatter (one point per row, error bars over seeds), the cost of each row, the
    estimated budget of each attack and the flags with their details. Images are embedded (base64
    PNG), CSS and the few lines of sorting JS are inline: nothing is fetched."""
    import tempfile as _tf

    from .analysis import html as H
    from .analysis.plots import clean_vs_robust_plot

    df = table(store, task) if df is None else df
    metric = str(df.attrs.get("metric", "accuracy"))
    header, rows, numeric = _cells(df)
    source = getattr(store, "path", None)
    source = Path(str(source)).name if source and "://" not in str(source) else "the results store"
    parts = [f"<p>Generated from {H.esc(source)} by <code>natbench leaderboard --format html --write</code>; "
             f"do not edit by hand. Values are test {H.esc(metric)} in percent, mean ± std over seeds; "
             f"<b>best</b> = checkpoint selected on the validation split, <b>last</b> = final epoch. "
             f"Click a column header to sort.</p>",
             "<h2>Leaderboard</h2>", H.table(header, rows, numeric=numeric, sortable=True)]
    points, xlabel, caption = scatter_points(df)
    if points:
        ylabel = "robust (%): " + ", ".join(dict.fromkeys(p["column"] for p in points))
        with _tf.TemporaryDirectory() as tmp:
            png = clean_vs_robust_plot(points, Path(tmp) / "scatter.png", f"{task}: clean against robust, one point per row",
                                       xlabel, ylabel)
            parts += ["<h2>Clean against robust</h2>", H.img(png, "clean against robust", caption)]
    ch, cr, per_attack = cost_rows(store, task, df)
    if cr:
        parts += ["<h2>Cost of each row</h2>", H.table(ch, cr, numeric=[False] * (len(ch) - 6) + [True] * 4 + [False, False], sortable=True),
                  "<p class=\"note\">Wall times and device are the store's provenance of each run (training includes "
                  "nothing of its dependencies, e.g. NAT's adversary, which is its own row). The attack budget is an "
                  "estimated budget per image: forward and backward passes of the evaluated model implied by each attack's "
                  "parameters (steps x restarts x targets x EOT; Square: queries), summed over the row's attacks; natbench does "
                  "not count passes. Attacks that work only on still-robust points use fewer.</p>"]
    if per_attack:
        arow = [[aid, d["attack"], ", ".join(f"{k}={v}" for k, v in sorted(d["params"].items())) or "-",
                 f"{d['budget'].forward:g}", f"{d['budget'].backward:g}",
                 f"{d['budget'].surrogate_backward:g}" if d["budget"].surrogate_backward else "", d["budget"].note]
                for aid, d in per_attack.items()]
        parts += ["<h3>Estimated budget per image of each attack</h3>",
                  H.table(["attack id", "attack", "params", "forward", "backward", "surrogate backward", "note"], arow,
                          numeric=[False, False, False, True, True, True, False])]
    flag_rows = []
    runs = store.runs(task)
    for rid, defense in zip(runs["run_id"], runs["defense"]):
        chk = store.checks(rid)
        for c in chk[~chk["passed"]].itertuples():
            flag_rows.append([defense, rid, c.checkpoint, c.name, c.detail])
    parts.append("<h2>Flags</h2>")
    if flag_rows:
        parts += ["<p>Failed evaluation sanity checks (the flags column; causes and remedies in docs/flags.md):</p>",
                  H.table(["defense", "run", "checkpoint", "check", "detail"], flag_rows, sortable=True)]
    else:
        parts.append('<p class="pass">No run of this task failed a sanity check.</p>')
    return H.page(f"natbench leaderboard: {task}", "\n".join(parts), script=True)


# ``natbench.leaderboard("digits")`` (the Python API) calls this module: natbench.api.leaderboard
import sys as _sys  # noqa: E402

from natbench.api import CallableModule as _CallableModule  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
