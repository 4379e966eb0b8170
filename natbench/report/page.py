"""The report page (:func:`build_report`): the runs, their training curves, the analyses
(:mod:`natbench.report.analyses`), the stored suite results and sanity checks, and provenance."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from ..analysis import html as H
from ..analysis import plots
from ..errors import ConfigError, RunError
from ..safety import atomic_write
from .runs import (REPORT_DIR, REPORT_PAGE, ReportEnv, ReportOptions, ReportRun, headline_metric, label_runs,
                   load_run, slug)


def build_report(root: Path, run_id: str, compare: Sequence[str] = (), *, data_root: Path | None = None,
                 device: torch.device | str = "cpu", reporter: Any = None, registry: Any = None,
                 options: ReportOptions | None = None, db: str | None = None) -> Path:
    """Write the report of ``run_id`` (with ``compare`` runs side by side); return the page's path.
    ``db``: the results store URL (default: ``$NATBENCH_DB`` or ``<root>/natbench.sqlite``)."""
    from ..registry import get_registry
    from ..runner import Reporter
    from ..store import open_store, store_exists, store_url
    from .analyses import analysis_sections
    from .corruptions import corruptions_section

    opts = options or ReportOptions()
    if opts.checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {opts.checkpoint!r}: expected best or last")
    root = Path(root)
    reg = registry or get_registry()
    reporter = reporter or Reporter()
    if not store_exists(root, db):
        raise RunError(f"no results store at {store_url(root, db)}; run something first, "
                       f"e.g. natbench run --task digits --defense vanilla")
    store = open_store(root, db, readonly=True)  # a reading command never writes the store
    env = ReportEnv(root, store, torch.device(device), data_root, reg, reporter)
    try:
        ids = list(dict.fromkeys([run_id, *compare]))
        runs = [load_run(env, rid) for rid in ids]
        label_runs(runs)
        task_name = runs[0].resolved.task
        for r in runs[1:]:
            if r.resolved.task != task_name:
                raise ConfigError(f"--compare {r.run_id}: its task is {r.resolved.task}, the report's run is of {task_name}; "
                                  f"compare runs of one task")
        out_dir = root / run_id / REPORT_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        sections: list[str] = []
        sections.append(_overview(runs, opts))
        sections.append(_training_section(runs, out_dir, store))
        sections.append(analysis_sections(runs, env, out_dir, opts))
        sections.append(_results_section(runs, store))
        sections.append(corruptions_section(runs, store, out_dir, opts.checkpoint))  # heat map when corruption results exist
        sections.append(_provenance_section(runs))
        title = f"natbench report: {run_id}"
        page = H.page(title, "\n".join(sections))
        path = out_dir / REPORT_PAGE
        atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))  # a unique temporary name
        reporter.message(f"wrote {path} ({len(page) / 1e6:.1f} MB) and {len(list(out_dir.glob('*.png')))} PNGs")
        return path
    finally:
        store.close()


def _overview(runs: list[ReportRun], opts: ReportOptions) -> str:
    main = runs[0]
    rows = [[r.label, r.run_id, r.record.task, r.record.profile, r.record.seed] for r in runs]
    text = (f"<p>Task <b>{H.esc(main.record.task)}</b>; analyses on the <b>{H.esc(opts.checkpoint)}</b> checkpoint "
            f"of each run, on the test set. Plots are side by side (one panel or line per run) where that makes "
            f"sense. Definitions: docs/analysis.md.</p>")
    return "<h2>Runs</h2>" + text + H.table(["label", "run id", "task", "profile", "seed"], rows,
                                            numeric=[False, False, False, False, True])



def _training_section(runs: list[ReportRun], out_dir: Path, store: Any) -> str:
    parts = ["<h2>Training curves</h2>"]
    for r in runs:
        if not r.history:
            parts.append(f'<p class="note">{H.esc(r.label)}: no per-epoch history in record.json.</p>')
            continue
        select_on = getattr(r.resolved.plan.base.cls, "select_on", "robust")
        metric = headline_metric(r, store)
        png = plots.training_report(r.history, out_dir / f"training_{slug(r.run_id)}.png",
                                    f"{r.label}: {r.run_id}", metric, select_on)
        val = [h for h in r.history if "val_clean" in h]
        cap = ""
        if val:
            key = "val_clean" if select_on == "clean" else "val_robust"
            ib = max(range(len(val)), key=lambda i: (val[i][key], -i))
            b, last = val[ib], val[-1]
            cap = (f"Best epoch {b['epoch'] + 1} (validation {metric} clean {100 * b['val_clean']:.2f}%, robust "
                   f"{100 * b['val_robust']:.2f}%); last epoch {last['epoch'] + 1} (clean {100 * last['val_clean']:.2f}%, "
                   f"robust {100 * last['val_robust']:.2f}%). Validation robust = PGD-{r.resolved.spec.selection.steps} "
                   f"on the held-out validation split. Training time "
                   f"{sum(h.get('seconds', 0.0) for h in r.history):.1f} s over {len(r.history)} epochs.")
        parts.append(H.img(png, f"training curves of {r.label}", cap))
    return "\n".join(parts)



def _results_section(runs: list[ReportRun], store) -> str:
    """The store's results of every run, one table per threat model it was evaluated under: its own
    (``task.threat_model``) first, then those of ``natbench eval --threat-model`` (never mixed)."""
    from .. import threats

    parts = ["<h2>Suite results and sanity checks (from the store)</h2>"]
    every = store.results(threat=None)
    for r in runs:
        own = threats.own(r.record.config)
        keys = ["", *sorted({k for k in every.loc[every["run_id"] == r.run_id, "threat"] if k},
                            key=lambda k: threats.order(threats.from_key(k)))]
        for i, key in enumerate(keys):
            label = (f"threat model {threats.describe(*own)} (trained under)" if not key else
                     f"threat model {threats.describe(*threats.from_key(key))} (natbench eval --threat-model; "
                     f"trained under {threats.describe(*own)})")
            res = every[(every["run_id"] == r.run_id) & (every["threat"] == key)]
            parts.append(_results_table(r, res, store, key, label, heading=i == 0))
    parts.append('<p class="note">Accuracy-type metrics in percent; entropy, non-target entropy and Hoyer are the '
                 "clean evaluation's sparsity means; accuracy@e and median_norm come from a minimum-norm attack's "
                 "per-sample minimal norms (robust at e: clean-correct and minimal norm &gt; e).</p>")
    return "\n".join(parts)


def _results_table(r: ReportRun, res, store, threat: str, label: str, heading: bool) -> str:
    """One run's results, worst case and checks under one threat model (``threat``: its store key)."""
    from ..leaderboard_corruptions import is_corruption_id  # corruptions: their own section (report/corruptions.py)

    order = [a for a in dict.fromkeys([*(r.record.suite if not threat else []), *res["attack"]]) if not is_corruption_id(a)]
    metrics = [m for m in dict.fromkeys(res["metric"])]
    cks = [c for c in ("best", "last") if c in set(res["checkpoint"])] + sorted(set(res["checkpoint"]) - {"best", "last"})
    header = ["attack"] + [f"{ck} {m}" for ck in cks for m in metrics]
    rows = []
    for a in order:
        sub = res[res["attack"] == a]
        if sub.empty:
            continue
        row = [a]
        for ck in cks:
            for m in metrics:
                v = sub[(sub["checkpoint"] == ck) & (sub["metric"] == m)]["value"]
                x = float(v.iloc[0]) if len(v) else float("nan")
                row.append("" if x != x else (f"{100 * x:.2f}" if m in ("accuracy", "mAP", "rank1", "rank5", "rank10")
                                              or m.startswith("accuracy@") else f"{x:.4f}"))
        rows.append(row)
    wc = []
    for ck in cks:
        try:
            adversarial = [a for a in store.flags(r.run_id, ck, threat) if not is_corruption_id(a)]
            wc.append(f"{ck}: {100 * store.worst_case(r.run_id, ck, adversarial, threat=threat):.2f}%")
        except (RunError, ValueError):
            pass
    chk = store.checks(r.run_id, threat)
    crow = [[c.checkpoint, c.name, "pass" if c.passed else "FAIL", c.detail] for c in chk.itertuples()]
    classes = ["" if c.passed else "fail" for c in chk.itertuples()]
    failed = sorted({c.name for c in chk.itertuples() if not c.passed})
    return ((f"<h3>{H.esc(r.label)} <small>({H.esc(r.run_id)})</small></h3>" if heading else "")
            + f"<p><b>{H.esc(label[0].upper() + label[1:])}</b></p>"
            + H.table(header, rows, numeric=[False] + [True] * (len(header) - 1))
            + (f"<p>Per-sample worst case over every stored evaluation under this threat model (corruptions apart): {H.esc('; '.join(wc))}.</p>"
               if wc else "")
            + (f'<p class="fail">Flags (failed sanity checks, see docs/flags.md): {H.esc(", ".join(failed))}</p>'
               if failed else '<p class="pass">No sanity check failed.</p>')
            + H.table(["checkpoint", "check", "result", "detail"], crow, row_classes=classes))


def _provenance_section(runs: list[ReportRun]) -> str:
    rows = []
    for r in runs:
        rec = r.record
        rows.append([r.label, rec.run_id, rec.config_hash[:16], rec.git_rev, rec.seed, rec.profile, rec.variant or "-",
                     rec.device, f"{rec.wall_train_s:.1f}", f"{rec.wall_eval_s:.1f}", rec.started, rec.finished,
                     ", ".join(f"{k} {v}" for k, v in sorted(rec.versions.items()))])
    parts = ["<h2>Provenance</h2>", H.table(
        ["run", "run id", "config hash", "git rev", "seed", "profile", "variant", "device", "train s", "eval s",
         "started", "finished", "versions"], rows, numeric=[False] * 4 + [True] + [False] * 3 + [True, True] + [False] * 3)]
    for r in runs:
        cfg = yaml.safe_dump(r.record.config, sort_keys=False, default_flow_style=None, width=120)
        parts.append(f"<details><summary>resolved config of {H.esc(r.label)} (config hash {H.esc(r.record.config_hash)})"
                     f"</summary><pre>{H.esc(cfg)}</pre></details>")
    return "\n".join(parts)

