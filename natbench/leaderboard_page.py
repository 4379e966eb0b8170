"""The self-contained html leaderboard page of a task (:func:`html_page`), its clean-vs-robust scatter
(:func:`scatter_points`) and the cost of each row (:func:`cost_rows`). Re-exported by
:mod:`natbench.leaderboard`; ``natbench leaderboard --format html`` prints this page and ``--write``
writes the same page."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import leaderboard as L
from .leaderboard_render import _cells, _fmt, _isnan


def _row_key_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in ("defense", "profile", "variant") if c in df.columns]


def _point_columns(df: pd.DataFrame) -> tuple[str, str | None, list[str], str]:
    """``(clean column, worst-case column or None, attack columns in order, metric)`` of a table frame.
    With several metrics (re-id) the metric that has a worst-case column is used (rank-1), else the
    first; with several eps the first worst-case column (the suite's first eps)."""
    metrics = str(df.attrs.get("metric", "accuracy")).split("/")
    values = L.value_columns(df)
    if len(metrics) == 1:
        m, suffix = metrics[0], ""
    else:
        m = next((mm for mm in metrics if any(str(c).startswith(f"worst-case {mm}") for c in values)), metrics[0])
        suffix = f" {m}"
    worsts = [c for c in values if c == f"worst-case{suffix}" or str(c).startswith(f"worst-case{suffix} @")
              or (not suffix and str(c).startswith("worst-case @"))]
    mine = [c for c in values if (len(metrics) == 1 or str(c).endswith(suffix)) and not str(c).startswith("worst-case")]
    clean = f"clean{suffix}"
    attacks = [c for c in mine if c not in (clean, f"avg{suffix}") and not str(c).startswith(L.ESCALATED_PREFIX)]
    return clean, (worsts[0] if worsts else None), attacks, m


def _err(rec: dict, col: str) -> tuple[float, float]:
    """``(below, above)`` the value: the cell's 95 % interval; (0, 0) without one."""
    v, lo, hi = rec.get(col), rec.get(f"{col}_lo"), rec.get(f"{col}_hi")
    if any(x is None or _isnan(x) for x in (v, lo, hi)):
        return 0.0, 0.0
    return max(0.0, float(v) - float(lo)), max(0.0, float(hi) - float(v))


def scatter_points(df: pd.DataFrame) -> tuple[list[dict], str, str]:
    """One point per table row: clean (x) against robust (y), error bars = the cells' 95 % intervals.

    Robust is the row's worst-case column (per sample over clean and every attack of one eps; for
    detection the minimum over attacks of mAP) when it has a value, else the minimum over the row's
    attack columns of the metric. Returns ``(points, x label, caption text saying which column each
    point uses)``."""
    clean, worst, attacks, m = _point_columns(df)
    keys = [k for k in _row_key_cols(df) if k == "defense" or df[k].nunique() > 1]  # a shared profile says nothing
    points, used = [], {}
    for rec in df.to_dict("records"):
        x = rec.get(clean)
        if x is None or _isnan(x):
            continue
        if worst is not None and rec.get(worst) is not None and not _isnan(rec.get(worst)):
            col = worst
        else:
            have = [a for a in attacks if rec.get(a) is not None and not _isnan(rec.get(a))]
            col = min(have, key=lambda a: rec[a]) if have else None
        if col is None:
            continue
        label = " ".join(str(rec[k]) for k in keys if rec.get(k) not in (None, "")) or "?"
        points.append({"label": label, "checkpoint": str(rec.get("checkpoint", "")), "x": float(x), "y": float(rec[col]),
                       "xerr": _err(rec, clean), "yerr": _err(rec, col), "column": col})
        used.setdefault("worst" if col == worst else "min", []).append(f"{label} ({rec.get('checkpoint', '')})")
    parts = []
    for what, rows in used.items():
        text = (f"'{worst}' (the worst case: per sample over clean and every attack of the run at that eps; for a "
                f"metric that is not per sample, such as mAP, the minimum over attacks)" if what == "worst"
                else "the minimum over the row's attacks (no per-sample flags stored)")
        parts.append(f"{text} for {len(rows)} row(s)" + ("" if len(used) == 1 else ": " + ", ".join(rows)))
    caption = (f"Robust = {'; '.join(parts) or 'nothing to plot'}. Error bars: the 95 % interval of each cell "
               f"(Wilson over test points, widened by the spread over seeds; docs/leaderboard.md). "
               f"Filled circles: best checkpoint; open squares: last.")
    return points, f"{clean} ({m}, %)", caption


def cost_rows(store, task: str, df: pd.DataFrame) -> tuple[list[str], list[list[str]], dict[str, dict]]:
    """The cost of each row of the leaderboard (one line per defense/profile/variant, both checkpoints
    share it): seeds, training and evaluation wall time (mean, min-max over seeds, from the store's
    runs), device(s), and the *estimated* attack budget per image summed over the row's suite
    (:mod:`natbench.analysis.budget`). Also returns ``{attack id: {"attack", "params", "budget"}}``."""
    from .analysis.budget import attack_budget
    from .leaderboard_facts import escalation

    runs = store.runs(task)
    res = store.results(task)
    runs = runs[runs["run_id"].isin(res["run_id"])].sort_values(["finished", "run_id"]).drop_duplicates("config_hash", keep="last")
    keys = _row_key_cols(df)
    per_attack: dict[str, dict] = {}
    header = [*keys, "seeds", "train s (mean)", "train s (min-max)", "eval s (mean)", "device",
              "attack budget per image (estimated)"]
    rows = []
    if runs.empty:
        return header, rows, per_attack
    if "variant" not in runs.columns:
        runs = runs.assign(variant="")
    # the runs of a row are its run_ids (best and last share them); a frame without them: match the keys
    ids = (df[[*keys, "run_ids"]].drop_duplicates(keys) if "run_ids" in df.columns else df[keys].drop_duplicates()) if keys else None
    for key in (ids.to_dict("records") if ids is not None else [{}]):
        run_ids = str(key.pop("run_ids", "") or "").split()
        sel = runs[runs["run_id"].isin(run_ids)] if run_ids else runs
        for k, v in ({} if run_ids else key).items():
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
        attacks = sorted(present, key=lambda a: (a.startswith(L.ESCALATED_PREFIX), order.get(a, len(order)), a))
        for aid in attacks:
            if aid in suite_cfg:
                name, params = suite_cfg[aid].get("attack", ""), suite_cfg[aid].get("params") or {}
            elif (found := escalation(store, sel["run_id"].iloc[-1], aid, suite_cfg)) is not None:
                name, params = found  # as the run recorded it (natbench.leaderboard_facts)
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


def _meta(col: str, v) -> str:
    if v is None or pd.isna(v) or v == "":
        return ""
    if col == "eps" and isinstance(v, float):
        return L.eps_text(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def html_page(store, task: str, df: "pd.DataFrame | list[pd.DataFrame] | None" = None) -> str:
    """The self-contained leaderboard page of ``task``: per threat model (one section each,
    :func:`natbench.leaderboard.tables`) the table (click a header to sort), what each row was measured
    on and a clean-vs-robust scatter (one point per row, error bars over seeds); then the cost of each
    row, the estimated budget of each attack and the flags with their details. ``df``: one table frame
    or a list of them (default: every threat model's). Images are embedded (base64 PNG), CSS and the
    few lines of sorting JS are inline: nothing is fetched."""
    import tempfile as _tf

    from .analysis import html as H
    from .analysis.plots import clean_vs_robust_plot

    frames = L.tables(store, task) if df is None else (list(df) if isinstance(df, (list, tuple)) else [df])
    df = frames[0] if len(frames) == 1 else L.concat(frames)
    metric = str(df.attrs.get("metric", "accuracy"))
    source = getattr(store, "path", None)
    source = Path(str(source)).name if source and "://" not in str(source) else "the results store"
    parts = [f"<p>Generated from {H.esc(source)} by <code>natbench leaderboard --format html --write</code>; "
             f"do not edit by hand. Values are test {H.esc(metric)} in percent, mean over seeds ± the larger half of the "
             f"cell's 95 % interval (Wilson over test points, widened by the spread over seeds; docs/leaderboard.md); "
             f"<code>avg</code> is the mean over the table's own attacks only; rows are "
             f"sorted by the headline robustness, descending; "
             f"<b>best</b> = checkpoint selected on the validation split, <b>last</b> = final epoch. "
             f"One table per threat model: no <code>avg</code> or worst case mixes two; <code>trained</code> names "
             f"the threat model a row was trained under where it is not the table's. "
             f"Click a column header to sort.</p>"]
    for i, f in enumerate(frames):
        title = f.attrs.get("threat_title", "")
        header, rows, numeric = _cells(f)
        parts += [f"<h2>Leaderboard{(' — ' + H.esc(title)) if title else ''}</h2>",
                  f"<p><code>avg</code>: mean over {H.esc(', '.join(f.attrs.get('avg_attacks', [])) or 'no attack')}; "
                  f"sorted by {H.esc(f.attrs.get('sort_by') or 'defense')}.</p>",
                  H.table(header, rows, numeric=numeric, sortable=True)]
        meta = [c for c in ("defense", "profile", "variant", "trained", "checkpoint", *L.META_COLS) if c in f.columns]
        if "run_ids" in f.columns:
            mrows = [[_fmt(v) if c not in ("eps", "epochs", "n_test") else _meta(c, v) for c, v in zip(meta, rec)]
                     for rec in f[meta].itertuples(index=False)]
            parts += ["<h3>What each row was measured on</h3>", H.table(meta, mrows, sortable=True)]
        points, xlabel, caption = scatter_points(f)
        if points:
            ylabel = "robust (%): " + ", ".join(dict.fromkeys(p["column"] for p in points))
            with _tf.TemporaryDirectory() as tmp:
                png = clean_vs_robust_plot(points, Path(tmp) / f"scatter{i}.png",
                                           f"{task}{(' — ' + title) if title else ''}: clean against robust, one point per row",
                                           xlabel, ylabel)
                parts += [f"<h3>Clean against robust{(' — ' + H.esc(title)) if title else ''}</h3>",
                          H.img(png, "clean against robust", caption)]
    from . import leaderboard_corruptions, leaderboard_minnorm

    parts += leaderboard_corruptions.html_section(store, task) + leaderboard_minnorm.html_section(store, task)
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
