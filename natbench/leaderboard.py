"""Leaderboards, generated from the store and never edited by hand (docs/leaderboard.md).

:func:`table` pivots a task's results into one row per (defense, profile, variant, checkpoint): a row
aggregates only runs that differ in seed (:mod:`natbench.leaderboard_rows`), so a spec of one's own
that keeps a built-in's name but changes e.g. eps is its own row, its ``variant`` saying what differs.
Columns: ``seeds``, ``clean``, every attack in suite order, ``avg`` (the mean over the table's suite
attacks only: the same set for every row, clean never part of it), ``worst-case`` (per sample over
clean and the attacks of one eps where flags are stored; detection: the minimum over attacks of mAP),
``flags``, then what a reader needs to compare rows: ``norm``, ``eps``, ``epochs``, ``n_test``,
``natbench`` (version) and ``run_ids``. Every value column ``c`` has ``c_lo``/``c_hi``, its 95 %
interval, and with several seeds in a row ``c_std``. Values are percent. Rows are sorted by the task's
headline robustness (AutoAttack where run, else worst-case), descending (``df.attrs["sort_by"]``).

:func:`render` turns such a frame into md / csv / json / html (a bare table); :func:`html_page`
(:mod:`natbench.leaderboard_page`) makes the full self-contained page; :func:`write` writes
``<out_dir>/<task>.{md,csv,json}`` (and ``.html`` when asked) atomically, with the user's umask.
No printing here: the CLI renders.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from natbench import threats
from natbench.errors import RunError

from .leaderboard_cells import _attack_order, _failed_checks, _merge_metrics, _n_test, _one, _worst_case, concat  # noqa: F401
from .leaderboard_corruptions import is_corruption_id  # corruptions: their own table, never in avg/worst-case
from .leaderboard_render import (FORMATS, WRITE_FORMATS_HTML, _WRITE_FORMATS, cell, headline_columns,  # noqa: F401
                                 md_preamble, render, suites_text, value_columns, write)
from .leaderboard_rows import (ESCALATED_PREFIX, KEY_COLS, META_COLS, SUFFIXES, RunInfo, eps_text,  # noqa: F401
                               interval, run_info)

log = logging.getLogger(__name__)

_CHECKPOINT_ORDER = {"best": 0, "last": 1}
#: attack registry names whose column is a task's headline robustness where run
AUTOATTACK = ("autoattack", "autoattack-rand")


def tasks(store) -> list[str]:
    """Tasks that have at least one complete run with results, sorted by name."""
    return sorted(store.results()["task"].unique().tolist())


#: metrics whose per-sample flags are what the store's flags hold (correct / rank-1 correct): the
#: per-sample ``worst-case`` column and Wilson intervals go with them
FLAG_METRICS = ("accuracy", "rank1")


def task_metrics(store, task: str) -> tuple[str, ...]:
    """The metrics a task's leaderboard shows, as its newest run recorded them
    (:func:`natbench.leaderboard_facts.metrics`: its task kind's ``LEADERBOARD_METRICS``, re-id: mAP
    and rank-1, or ``headline_metric``); a run recorded before that: from its task kind's class;
    ``("accuracy",)`` when the kind is unknown."""
    from .leaderboard_facts import DEFAULT_METRICS, metrics

    runs = store.runs(task)
    if runs.empty:
        return DEFAULT_METRICS
    return metrics(store, runs["run_id"].iloc[-1])


@dataclass
class _Context:
    """What every metric's frame of one table shares: the runs, their :class:`RunInfo`, the attacks
    ``avg`` is over and the eps group of every attack."""

    store: object
    task: str
    res: pd.DataFrame
    runs: pd.DataFrame
    info: dict[str, RunInfo]
    avg_attacks: list[str]
    group_of: dict[str, str]  # attack id -> worst-case column name ("worst-case" or "worst-case @8/255")
    autoattack: list[str]  # attack ids that are AutoAttack
    threat_eps: str = ""  # the runs' threat-model eps as text ("8/255") when they share one
    threat: tuple = ()  # the table's threat model (norm, eps)
    key_of: dict = None  # run id -> the threat-model key its rows of this table are stored under ('' = own)
    foreign_suite: dict = None  # run id -> the suite name of its evaluation under this (not its own) threat model

    def key(self, run_id: str) -> str:
        return (self.key_of or {}).get(run_id, "")


#: filters of the result rows every threat-model table reads, ``"module:function"`` (frame -> frame),
#: applied in order: e.g. ``"natbench.leaderboard_corruptions:adversarial_only"`` keeps corruption
#: results (their own table, :data:`EXTRA_TABLES`) out of every threat-model table, its avg and worst case
RESULT_FILTERS: tuple[str, ...] = ("natbench.leaderboard_corruptions:adversarial_only",)
#: builders of the tables shown after the threat-model ones, ``"module:function"`` with
#: ``function(store, task) -> list of frames`` (``attrs["threat_title"]`` names each, e.g. "corruptions";
#: an empty list where the task has no such results); :func:`tables` appends them when no threat model
#: is chosen
EXTRA_TABLES: tuple[str, ...] = ()


def _load(path: str):
    from .registry import load_target

    return load_target(path)


def _runs(store, task: str, profile: str | None):
    """``(results under every threat model, the runs (one per config and numerics), their RunInfo)``."""
    res = store.results(task, threat=None)
    for path in RESULT_FILTERS:  # e.g. corruptions: their own table
        res = _load(path)(res)
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
    from .provenance import numerics_label

    # re-runs of an identical config count once; a result computed under other numerics (a --force
    # rerun with other threads/device/torch: natbench.provenance) is its own row, "numerics=<tag>"
    runs = runs.assign(_numerics=[numerics_label(v) for v in runs["variant"]])
    runs = (runs.sort_values(["finished", "run_id"])
            .drop_duplicates(["config_hash", "_numerics"], keep="last"))
    info = run_info(store, runs)
    res = res[res["run_id"].isin(runs["run_id"])]
    found = [_own(info[r]) if not k else threats.from_key(k) for r, k in zip(res["run_id"], res["threat"])]
    # a run whose config does not say its eps (a hand-filled store) joins the most common known threat
    # model of its norm, as it joined the one table before there were several
    known = Counter(t for t in found if t[1] == t[1])
    found = [t if t[1] == t[1] else next((k for k, _ in known.most_common() if k[0] == t[0]), t) for t in found]
    return res.assign(_threat=found), runs, info


def _own(i: RunInfo) -> tuple[str, float]:
    """The threat model a run was trained under (linf where its config predates the field)."""
    return (i.norm or "linf", i.eps)


def _same(a: tuple, b: tuple) -> bool:
    """The same threat model (an unknown eps, NaN, equal to another unknown one of the same norm)."""
    return threats.same(a, b) or (a[0] == b[0] and a[1] != a[1] and b[1] != b[1])


def threat_models(store, task: str, *, profile: str | None = None, _base=None) -> list[tuple[str, float]]:
    """The threat models ``(norm, eps)`` the task's results were evaluated under, in table order
    (:func:`natbench.threats.order`: L-inf, L2, L1, each by eps)."""
    res = (_base or _runs(store, task, profile))[0]
    found: list[tuple[str, float]] = []
    for t in res["_threat"]:
        if not any(_same(t, f) for f in found):
            found.append(t)
    return sorted(found, key=threats.order)


def _context(store, task: str, profile: str | None, threat: tuple | None = None, base=None) -> _Context:
    res, runs, info = base or _runs(store, task, profile)
    if threat is None:
        threat = threat_models(store, task, _base=(res, runs, info))[0]
    everything = res
    res = res[[_same(t, threat) for t in res["_threat"]]]
    if res.empty:
        have = ", ".join(f"{n}:{eps_text(e)}" for n, e in threat_models(store, task, _base=(everything, runs, info)))
        raise RunError(f"No results for task '{task}' under {threats.describe(*threat)} in {store.path}. "
                       f"Evaluated under: {have}. Run: natbench eval RUN --threat-model {threat[0]}:{eps_text(threat[1])}")
    key_of = dict(zip(res["run_id"], res["threat"]))
    runs = runs[runs["run_id"].isin(res["run_id"])]
    from .provenance import with_numerics

    runs = runs.assign(variant=[with_numerics(info[r].variant, n) for r, n in zip(runs["run_id"], runs["_numerics"])],
                       _ident=[info[r].ident for r in runs["run_id"]])
    # two identities under one (defense, profile, variant) text (e.g. a spec file under a name that is
    # not registered): each gets its identity in the variant, so they are never averaged together
    for _, grp in runs.groupby(["defense", "profile", "variant"], sort=False):
        if grp["_ident"].nunique() > 1:
            for i in grp.index:
                v = runs.at[i, "variant"]
                runs.at[i, "variant"] = (f"{v} " if v else "") + f"[config {runs.at[i, '_ident'][:8]}]"
    res = res.drop(columns=["variant", "threat", "_threat"])
    res = res.merge(runs[["run_id", "variant", "_ident"]], on="run_id")
    own_runs = [r for r in runs["run_id"] if not key_of.get(r)]  # rows under the run's own threat model
    # avg: the attacks of the suite most runs were configured with (real runs store it in their config),
    # else the most common list of attack ids the store keeps per run; clean and escalations never.
    # A run evaluated under another threat model (natbench eval --threat-model) counts with what it was
    # evaluated with there.
    attack_list = lambda ids: tuple(a for a in ids if a != "clean" and not a.startswith(ESCALATED_PREFIX)  # noqa: E731
                                    and not is_corruption_id(a))  # corruptions: natbench.leaderboard_corruptions
    configured = Counter(info[r].suite for r in own_runs if info[r].suite)
    foreign = Counter(attack_list(dict.fromkeys(res.loc[res["run_id"] == r, "attack"])) for r in runs["run_id"] if key_of.get(r))
    if configured and sum(configured.values()) >= sum(foreign.values()):
        avg_attacks = list(attack_list(configured.most_common(1)[0][0]))
    elif foreign:
        avg_attacks = list(foreign.most_common(1)[0][0])
    else:
        stored = Counter(attack_list(s) for r, s in zip(runs["run_id"], runs["suite"]) if r in own_runs)
        avg_attacks = list(stored.most_common(1)[0][0]) if stored else []
    # eps groups of the worst case: attacks with their own eps (re-id's 8/255 and 10/255) apart from
    # those at the run's threat-model eps (the rest, escalations included)
    own: dict[str, float] = {}
    for r in own_runs:
        for aid, e in info[r].attack_eps.items():
            if e == e and e != info[r].eps:
                own.setdefault(aid, e)
    threat_eps = {threat[1]} if threat[1] == threat[1] else set()
    groups = list(dict.fromkeys(own.values()))
    if not groups:
        group_of: dict[str, str] = {}
        default = "worst-case"
    else:
        default = "worst-case @" + (eps_text(next(iter(threat_eps))) if len(threat_eps) == 1 else "threat-model eps")
        group_of = {aid: f"worst-case @{eps_text(e)}" for aid, e in own.items()}
    attacks = set(res["attack"]) - {"clean"}
    group_of = {a: group_of.get(a, default) for a in attacks}
    from .leaderboard_facts import get as get_facts

    # the suite of an evaluation under another threat model: recorded with it (natbench.leaderboard_facts)
    foreign = {r: get_facts(store, r).get("threats", {}).get(key_of[r], {}) for r in runs["run_id"] if key_of.get(r)}
    autoattack = list(dict.fromkeys([aid for r in own_runs for aid, name in info[r].suite_attacks.items() if name in AUTOATTACK]
                                    + [aid for f in foreign.values() for aid, name in (f.get("attacks") or {}).items()
                                       if name in AUTOATTACK]
                                    + [a for a in attacks if a in AUTOATTACK and foreign]))
    return _Context(store, task, res, runs, info, avg_attacks, group_of, autoattack,
                    eps_text(next(iter(threat_eps))) if len(threat_eps) == 1 else "", tuple(threat), key_of,
                    {r: str(f.get("suite", "")) for r, f in foreign.items()})


def tables(store, task: str, metric: str | None = None, *, profile: str | None = None,
           threat_model: tuple | None = None, extra: bool = False) -> list[pd.DataFrame]:
    """One :func:`table` per threat model the task's results were evaluated under (L-inf, L2, L1, each
    by eps), or only ``threat_model`` ``(norm, eps)``. A table never mixes threat models: its ``avg``
    and ``worst-case`` are over attacks of its own threat model only; a run evaluated under another
    threat model than it was trained under (``natbench eval --threat-model``) is a row of that
    model's table, its ``trained`` column naming what it was trained under. ``extra``: append the
    tables of :data:`EXTRA_TABLES` (e.g. corruptions)."""
    base = _runs(store, task, profile)
    chosen = [threat_model] if threat_model is not None else threat_models(store, task, _base=base)
    out = [table(store, task, metric, profile=profile, threat_model=t, _base=base) for t in chosen]
    if threat_model is None and extra:
        for path in EXTRA_TABLES:  # e.g. the corruptions table
            out += _load(path)(store, task)
    return out


def table(store, task: str, metric: str | None = None, *, profile: str | None = None,
          threat_model: tuple | None = None, _base=None) -> pd.DataFrame:
    """The leaderboard of ``task`` for ``metric`` (default: :func:`task_metrics`). With several
    metrics (re-id's mAP and rank-1) every value column appears once per metric, named
    ``"<column> <metric>"`` (``clean mAP``, ``clean rank1``, ``sma-8 mAP``, ...) and the worst case
    ``"worst-case <metric> @<eps>"``, attack by attack. ``profile`` keeps one recipe profile.
    ``threat_model`` ``(norm, eps)``: the table of that threat model; default the first of
    :func:`threat_models` (``attrs["threat_models"]`` lists them all; :func:`tables` gives every one)."""
    all_metrics = task_metrics(store, task)
    metrics = (metric,) if metric else all_metrics
    base = _base or _runs(store, task, profile)
    ctx = _context(store, task, profile, threat_model, base)
    # the worst case: per sample where the flags are what the metric counts, else (detection's mAP,
    # a metric that is not per sample) the minimum over attacks of the task's only metric
    per_sample = any(m in FLAG_METRICS for m in all_metrics)
    frames = [_table(ctx, m, "sample" if m in FLAG_METRICS else (None if per_sample or m != all_metrics[0] else "min"))
              for m in metrics]
    out = frames[0] if len(frames) == 1 else _merge_metrics(frames, metrics, ctx.threat_eps)
    out = _sort(out, ctx, metrics)
    out.attrs.update(task=task, metric="/".join(metrics), avg_attacks=list(ctx.avg_attacks), threat=ctx.threat,
                     threat_title=threats.describe(*ctx.threat), threat_models=threat_models(store, task, _base=base))
    _label_suites(out, ctx)
    from .reference import mark_sources  # outside models (natbench eval --model): source column, seeds "-"

    return mark_sources(out, set(ctx.runs.loc[ctx.runs["profile"] == "external", "run_id"]))


def _label_suites(out: pd.DataFrame, ctx: _Context) -> None:
    """Say which suite the rows were evaluated with: ``attrs["suites"]`` (the titles name it) and, when
    the rows differ in it (e.g. cifar10's quick profile defaults to the light ``smoke`` suite, ``fast`` is
    MALT alone), a ``suite`` column naming each row's, so a light evaluation is never read as a full one."""
    # a run's configured suite names its own evaluations, not those under another threat model (eval --threat-model)
    of_run = {r: ctx.info[r].suite_name if not ctx.key(r) else (ctx.foreign_suite or {}).get(r, "") for r in ctx.runs["run_id"]}
    names = sorted({s for s in of_run.values() if s})
    out.attrs["suites"] = names
    if len(names) > 1 and "run_ids" in out.columns:
        out.insert(int(out.columns.get_loc("run_ids")), "suite", out["run_ids"].map(
            lambda ids: " ".join(dict.fromkeys(of_run.get(r) or "?" for r in str(ids).split()))))


def _sort(df: pd.DataFrame, ctx: _Context, metrics) -> pd.DataFrame:
    """Rows by the headline robustness, descending (empty last): AutoAttack where run, else the first
    worst-case column, else ``avg``, else ``clean``; ties by defense and checkpoint (best first)."""
    name = (lambda c: c) if len(metrics) == 1 else (lambda c: f"{c} {metrics[0]}")  # noqa: E731
    cands = [name(a) for a in ctx.autoattack] + [c for c in df.columns if str(c).startswith("worst-case")
                                                 and not str(c).endswith(SUFFIXES)] + [name("avg"), name("clean")]
    by = next((c for c in cands if c in df.columns and df[c].notna().any()), None)
    keys = pd.DataFrame({"v": -df[by].astype(float) if by else 0.0,
                         "d": df["defense"].astype(str),
                         "c": df["checkpoint"].map(lambda c: f"{_CHECKPOINT_ORDER.get(c, 2)}{c}")})
    order = keys.sort_values(["v", "d", "c"], na_position="last", kind="stable").index
    out = df.loc[order].reset_index(drop=True)
    out.attrs.update(df.attrs)
    out.attrs["sort_by"] = by or ""
    return out


def _table(ctx: _Context, metric: str = "accuracy", worst: str | None = "sample") -> pd.DataFrame:
    """One metric's frame: one row per (defense, profile, variant, identity, checkpoint).

    A row only shows the suite attacks that *every* run of it was evaluated with (an attack added
    to one seed with ``natbench eval`` is blank in a multi-seed row). ``avg`` is the mean over
    ``ctx.avg_attacks`` (blank where one is missing). ``worst`` = ``"sample"``: per eps group, the
    percentage of test samples correct on clean inputs and under every attack of the group shown for
    the run, escalated ones included (from the stored flags; needs two or more attacks);
    ``"min"``: the minimum over the row's attacks of the metric. ``flags`` names the sanity checks
    (``natbench.checks``) any run of the row failed, pointing at ``docs/flags.md``; the column is
    there only when some row failed a check; ``variant`` only when some row has one."""
    store = ctx.store
    sel = ctx.res[ctx.res["metric"] == metric]
    if sel.empty:
        raise RunError(f"No '{metric}' results for task '{ctx.task}' in {store.path}. "
                       f"Available metrics: {', '.join(sorted(ctx.res['metric'].unique()))}")
    key = ["defense", "profile", "variant", "_ident", "checkpoint"]
    attacks = _attack_order(ctx.runs["suite"], sel["attack"])
    suite_cols = [a for a in attacks if not a.startswith(ESCALATED_PREFIX)]
    wide = sel.set_index(["run_id", *key, "attack"])["value"].unstack("attack")
    wide = wide.reindex(columns=attacks) * 100.0
    wide.columns.name = None
    wide = wide.reset_index()
    # A row compares like with like: a suite attack that only some of its runs were evaluated with
    # (e.g. AutoAttack added to one seed by natbench eval) is left out of the whole row.
    for idx in wide.groupby(key, sort=False, dropna=False).groups.values():
        cells = wide.loc[idx, suite_cols]
        wide.loc[idx, [c for c in suite_cols if cells[c].isna().any() and cells[c].notna().any()]] = np.nan
    avg_cols = [a for a in ctx.avg_attacks if a in attacks]
    wide["avg"] = wide[avg_cols].mean(axis=1, skipna=False) if avg_cols else np.nan
    value_cols = [*attacks, "avg"]
    for col in dict.fromkeys(ctx.group_of[a] for a in attacks if a != "clean"):
        group = [a for a in attacks if a != "clean" and ctx.group_of[a] == col]
        if worst == "sample" and "clean" in attacks and len(group) >= 2:
            vals = [_worst_case(store, r["run_id"], r["checkpoint"], ["clean", *[a for a in group if r[a] == r[a]]],
                                ctx.key(r["run_id"])) for r in wide.to_dict("records")]
        elif worst == "min" and group:
            vals = [min((r[a] for a in group if r[a] == r[a]), default=np.nan) for r in wide.to_dict("records")]
        else:
            continue
        if any(w == w for w in vals):  # per sample: only when flags were stored
            wide[col] = vals
            value_cols.append(col)
    n_test = {(r, c): _n_test(store, r, c, ctx.key(r)) for r, c in zip(wide["run_id"], wide["checkpoint"])}
    bf16 = set(ctx.res.loc[(ctx.res["metric"] == "bf16_autocast") & (ctx.res["value"] > 0), "run_id"])
    rows = []
    for keyvals, idx in wide.groupby(key, sort=False, dropna=False).groups.items():
        g = wide.loc[idx]
        row = dict(zip(key, keyvals))
        run_ids = sorted(g["run_id"].unique())
        ns = [n_test[(r, row["checkpoint"])] for r in g["run_id"]]
        n = min(ns) if ns and all(x is not None for x in ns) else None
        row["seeds"] = len(run_ids)
        for col in value_cols:
            vals = g[col].astype(float).tolist()
            have = [v for v in vals if v == v]
            row[col] = float(np.mean(have)) if have else np.nan
            proportion = metric in FLAG_METRICS and col != "avg"  # avg is a mean of correlated proportions
            row[f"{col}_lo"], row[f"{col}_hi"] = interval(have, n, proportion)
            row[f"{col}_std"] = float(np.std(have, ddof=1)) if len(have) > 1 else np.nan
        row["flags"] = _failed_checks(store, wide, key, row, bf16, ctx.key)
        infos = [ctx.info[r] for r in run_ids]
        trained = [_own(i) for i in infos]  # the row's runs differ in seed only: one training threat model
        row["trained"] = _one(threats.short(*t) for t in trained)
        row["_other"] = any(t[1] == t[1] and not _same(t, ctx.threat) for t in trained)  # an unknown eps: not "other"
        # norm, eps: the threat model the row was evaluated under (the table's); trained: what it was trained under
        row.update(norm=ctx.threat[0], eps=ctx.threat[1], epochs=_one(i.epochs for i in infos),
                   n_test=n if n is not None else np.nan, natbench=_one(i.version for i in infos), run_ids=" ".join(run_ids))
        rows.append(row)
    out = pd.DataFrame(rows)
    several = bool((out["seeds"] > 1).any())
    shown = {"variant": (out["variant"] != "").any(), "trained": out["_other"].any()}  # only when some row needs them
    cols = [c for c in KEY_COLS if shown.get(c, True)] + ["seeds"]
    for col in value_cols:
        cols += [col, f"{col}_lo", f"{col}_hi"] + ([f"{col}_std"] if several else [])
    cols += (["flags"] if (out["flags"] != "").any() else []) + [c for c in META_COLS if c in out.columns]  # suite: added by _label_suites
    out = out[cols]
    out["seeds"] = out["seeds"].astype(int)
    for col in ("epochs", "n_test"):  # counts: integers in csv/json ("3", not "3.0"), empty when unknown
        vals = pd.to_numeric(out[col], errors="coerce")
        if (vals.dropna() % 1 == 0).all():
            out[col] = vals.astype("Int64")
    num = [c for c in cols if c in value_cols or c.endswith(SUFFIXES)]
    out[num] = out[num].astype(float).round(2)
    out.attrs.update(task=ctx.task, metric=metric)
    return out


# the html page (its own module; re-exported here, where callers have always found it)
from .leaderboard_page import cost_rows, html_page, scatter_points  # noqa: E402,F401


# ``natbench.leaderboard("digits")`` (the Python API) calls this module: natbench.api.leaderboard
import sys as _sys  # noqa: E402

from natbench.api import CallableModule as _CallableModule  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
