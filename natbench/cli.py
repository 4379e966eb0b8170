"""The ``natbench`` command line (the contract scripts and users rely on; see DESIGN.md).

Exit codes: 0 success; 2 a user error, printed as one red line (what, where, one fix); 1 a bug
(full traceback). ``--format csv``/``json`` print machine-readable output on stdout and nothing
else (progress and messages go to stderr).

Start-up is kept fast: this module imports typer and natbench's torch-free modules only; torch,
pandas, rich's tables and the plugins are imported inside the commands that need them, so
``--help``, ``--version``, ``list`` and argument errors answer without loading torch.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from .errors import ConfigError, NatbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="natbench: train a defense, attack it with a suite, compare on a leaderboard.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthetic fixtures in the real on-disk formats.")
app.add_typer(data_app, name="data")


class _LazyConsole:
    """rich's stdout Console, created on first use (rich is imported only by commands that print tables)."""

    _console = None

    def __getattr__(self, name: str):
        if _LazyConsole._console is None:
            from rich.console import Console

            _LazyConsole._console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        return getattr(_LazyConsole._console, name)


out = _LazyConsole()


def Table(*args, **kwargs):  # noqa: N802 - rich.table.Table, imported when a table is printed
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        print(f"natbench {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main_options(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                               help="Print natbench's version and exit")) -> None:
    """natbench: train a defense, attack it with a suite, compare on a leaderboard."""

RootOpt = typer.Option(None, "--root", help="Results root (default: $NATBENCH_ROOT or ./runs)")
DbOpt = typer.Option(None, "--db", help="Results store: a postgresql:// URL (default: $NATBENCH_DB, else <root>/natbench.sqlite)")
ThreadsOpt = typer.Option(None, "--threads", help="torch's intra-op CPU threads (default: $NATBENCH_THREADS, else "
                         "$OMP_NUM_THREADS, else 1; see NOTES.md). Recorded with every result: CPU numbers are "
                         "bit-identical only for the same threads, device and torch version")
SuiteOpt = typer.Option(None, "--suite", help="Attack suite: a name (natbench list suites) or a path to a suite YAML "
                        "(default: the task's)")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda")
DataRootOpt = typer.Option(None, "--data-root", help="Dataset root (default: $NATBENCH_DATA or ./data)")
LIST_KINDS = ("tasks", "defenses", "regularizers", "perturbations", "averagers", "attacks", "suites", "task_kinds")


def _threads(threads: Optional[int]) -> int:
    """Validate and apply --threads (natbench.threads) before any work; returns the count."""
    from .threads import apply

    return apply(threads)


def _check_names(reg, task: str, defenses: List[str], suite: Optional[str]) -> None:
    """Task, suite and defense-component names, checked before torch is imported so that a typo
    answers at once (resolve() checks everything again, with the same messages)."""
    from .errors import CompositionError, suggest

    def is_path(x: str) -> bool:
        return x.endswith((".yaml", ".yml")) or os.sep in x

    if not is_path(task):
        reg.entry("tasks", task)
    if suite and not is_path(suite):
        reg.entry("suites", suite)
    kinds = ("defenses", "regularizers", "perturbations", "averagers")  # natbench.compose.COMPONENT_KINDS
    names = sorted(n for k in kinds for n in reg.names(k))
    for spec in defenses:
        for n in (x.strip() for x in spec.split("+")):
            if n and not any(reg.has(k, n) for k in kinds):
                raise CompositionError(f"Unknown defense '{n}'.{suggest(n, names)} Available: {', '.join(names)}")


def _root(root: Optional[Path]) -> Path:
    return Path(root or os.environ.get("NATBENCH_ROOT") or "runs")


@app.command("list")
def list_(kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(LIST_KINDS)} (default: all)"),
          name: Optional[str] = typer.Argument(None, help="One entry of KIND: its Params (--set keys, defaults, meaning), "
                                                         "a suite's attacks or a task's profiles")) -> None:
    """List registered plugins as a table, or show one entry in detail (natbench list defenses trades)."""
    from .errors import unknown
    from .registry import get_registry

    reg = get_registry()
    if kind is not None and kind not in LIST_KINDS:
        raise unknown("list kind", kind, LIST_KINDS)
    if name is not None:
        from rich.markup import escape

        from .describe import describe

        for title, cols, rows in describe(reg, kind, name):
            table = Table(title=title, title_justify="left")
            for c in cols:
                table.add_column(c, overflow="fold")
            for row in rows:
                table.add_row(*map(escape, row))
            out.print(table)
        return
    for k in [kind] if kind else LIST_KINDS:
        table = Table(title=k, title_justify="left")
        for col in ("name", "target / spec", "alias", "task kinds", "cite"):
            table.add_column(col, overflow="fold")
        for e in reg.entries(k):
            if e.source != "builtin" and e.target:  # a plugin's cite and task kinds are class attributes
                try:
                    reg.load(k, e.name)
                    e = reg.entry(k, e.name)
                except NatbenchError as err:
                    e = dataclasses.replace(e, cite=f"[red]{err}[/red]")
            table.add_row(e.name, e.target or e.spec or "", e.alias or "", ", ".join(e.tasks or ()), e.cite)
        out.print(table)


@app.command()
def check() -> None:
    """Import every registry entry and check it against its contract (exit 1 if any fails)."""
    from .contract_check import problems
    from .registry import get_registry

    reg = get_registry()
    table = Table("kind", "name", "status", title="registry contract check", title_justify="left")
    failed = 0
    for kind in reg.kinds():
        for e in reg.entries(kind):
            p = problems(e, reg)
            failed += bool(p)
            table.add_row(kind, e.name, "[green]ok[/green]" if not p else "[red]" + "; ".join(p) + "[/red]")
    out.print(table)
    if failed:
        out.print(f"[red]{failed} entr{'y' if failed == 1 else 'ies'} failed the contract check[/red]")
        raise typer.Exit(1)


@app.command()
def run(
    task: str = typer.Option(..., "--task", "-t", help="Task name (natbench list tasks) or path to a task YAML"),
    defense: List[str] = typer.Option(..., "--defense", "-d", help="Defense spec, e.g. vanilla, pgd-at, trades+nat, nat (repeat for several)"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Training profile of the task spec"),
    seed: List[int] = typer.Option([0], "--seed", "-s", help="Seed (repeat for several runs)"),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: key.path=value (repeatable)"),
    sweep: List[str] = typer.Option([], "--sweep", help="Run once per value: key.path=v1,v2,... (repeatable: every combination); one leaderboard row per value"),
    suite: Optional[str] = SuiteOpt,
    device: str = DeviceOpt,
    root: Optional[Path] = RootOpt,
    db: Optional[str] = DbOpt,
    data_root: Optional[str] = DataRootOpt,
    force: bool = typer.Option(False, "--force", help="Train again from scratch even if an identical run exists "
                               "(with other numerics -- threads, device, torch -- the new result is kept beside the old)"),
    show: bool = typer.Option(True, "--leaderboard/--no-leaderboard", help="Print the task's leaderboard at the end"),
    eval_bf16: bool = typer.Option(False, "--eval-bf16", help="Evaluate under bf16 autocast (CUDA only; recorded with every result)"),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (shorthand for torchrun --nproc-per-node N -m natbench run ...)"),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Data-parallel: SyncBatchNorm, statistics of the global batch (CUDA only)"),
    threads: Optional[int] = ThreadsOpt,
    dependency_eval: bool = typer.Option(True, "--dependency-eval/--no-dependency-eval",
                                         help="Evaluate dependency runs (a NAT adversary, a transfer surrogate) after the run that needs them"),
) -> None:
    """Train TASK with DEFENSE (dependencies first), evaluate its attack suite, record the results.

    Every --defense x --sweep value x --seed combination is one run; all are checked before the first starts.
    Under torchrun (or with --nproc N) every rank trains on its shard of each batch (see natbench.distributed)."""
    from .registry import get_registry

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: expected a number of processes >= 1")
    reg = get_registry()
    _check_names(reg, task, defense, suite)  # before torch is imported (ui imports it)
    from .ui import RichReporter, setup_logging

    setup_logging()  # before the spec is read: its include: line says which file was used
    _threads(threads)
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _torchrun(nproc)
    from .resolve import data_root as resolve_data_root, resolve
    from .runner import Runner, pick_device

    combos = [list(set_) + list(extra) for extra in _sweep_sets(sweep)]
    resolved = [resolve(reg, task, d, profile=profile, seed=s, sets=c, suite=suite)
                for d in defense for c in combos for s in seed]  # all checks first
    droot = resolve_data_root(data_root)
    from .distributed import Dist

    runner = Runner(_root(root), droot, pick_device(device), RichReporter(), reg, eval_bf16=eval_bf16, db=db,
                    dist=_quiet_unless_main(Dist.from_env(device)), sync_bn=sync_bn, dependency_eval=dependency_eval)
    for r in resolved:
        runner.run(r, force=force)
    if show and runner.dist.is_main:
        _print_leaderboard(runner.store, resolved[0].task, "table")


def _csv(values: List[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@app.command()
def sweep(
    tasks: List[str] = typer.Option(..., "--tasks", help="Task names (comma-separated or repeated)"),
    defenses: List[str] = typer.Option(..., "--defenses", help="Defense specs (comma-separated or repeated)"),
    seeds: List[str] = typer.Option(["0"], "--seeds", help="Seeds (comma-separated or repeated)"),
    set_grid: List[str] = typer.Option([], "--set-grid", help="key.path=v1,v2,... (repeatable: every combination)"),
    set_: List[str] = typer.Option([], "--set", help="A fixed override for every cell: key.path=value (repeatable)"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Training profile of every task spec (default: each task's)"),
    suite: Optional[str] = SuiteOpt,
    executor: str = typer.Option("local", "--executor", help="local | debug | slurm (submitit)"),
    parallel: int = typer.Option(1, "--parallel", help="local: jobs at a time (1 = sequential)"),
    partition: Optional[str] = typer.Option(None, "--partition", help="slurm: partition"),
    gpus: int = typer.Option(1, "--gpus", help="slurm: GPUs per job"),
    time_min: int = typer.Option(600, "--time", help="Time limit per job in minutes (slurm requeues a preempted job)"),
    array_parallelism: int = typer.Option(16, "--array-parallelism", help="slurm: jobs of a stage's array at a time"),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="slurm: CPUs per job"),
    mem_gb: Optional[int] = typer.Option(None, "--mem-gb", help="slurm: memory per job (GB)"),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Job logs (default: <root>/sweep-logs)"),
    device: str = DeviceOpt,
    root: Optional[Path] = RootOpt,
    db: Optional[str] = DbOpt,
    data_root: Optional[str] = DataRootOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Run a grid of tasks x defenses x seeds x --set-grid values through submitit.

    Cells already complete in the store are skipped (a second identical sweep does nothing);
    dependency runs (NAT's adversaries, transfer surrogates) run first, once per task and seed."""
    from .registry import get_registry
    from .resolve import data_root as resolve_data_root
    from .store import Store, store_exists, store_url
    from .sweep import make_executor, plan_sweep, run_sweep
    from .ui import RichReporter, setup_logging

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    try:
        seed_list = [int(v) for v in _csv(seeds)]
    except ValueError:
        raise ConfigError(f"--seeds {','.join(seeds)}: expected integers, e.g. --seeds 0,1,2") from None
    reg = get_registry()
    n_threads = _threads(threads)  # exported: every job (subprocess, slurm) uses the same
    droot = resolve_data_root(data_root)
    rootp = _root(root)
    store = Store(store_url(rootp, db)) if store_exists(rootp, db) else None
    plan = plan_sweep(reg, store, _csv(tasks), _csv(defenses), seed_list, set_grid=set_grid, sets=set_,
                      profile=profile, suite=suite)
    ex = make_executor(executor, log_dir or rootp / "sweep-logs", partition=partition, gpus=gpus, time_min=time_min,
                       array_parallelism=array_parallelism, cpus=cpus, mem_gb=mem_gb)
    stages = plan.stages()
    skipped = sum(c.status == "skipped" for c in plan.cells)
    out.print(f"sweep: {len(plan.cells)} runs ({skipped} already complete), "
              f"{sum(len(st) for st in stages)} to run in {len(stages)} stage(s), executor {executor}, "
              f"{n_threads} thread(s) per job")
    if stages:
        setup_logging()
        run_sweep(plan, ex, root=rootp, db=db, data_root=str(droot) if droot else None, device=device,
                  parallel=parallel, reporter=RichReporter())
    table = Table("run", "stage", "status", "seconds", "run id", title="sweep", title_justify="left")
    colour = {"done": "green", "skipped": "cyan", "failed": "red", "pending": "yellow"}
    for c in sorted(plan.cells, key=lambda c: (-c.stage, c.label)):
        table.add_row(c.label, "dependency" if c.stage else "grid", f"[{colour[c.status]}]{c.status}[/]",
                      f"{c.seconds:.1f}" if c.seconds else "", c.run_id)
    out.print(table)
    failed = [c for c in plan.cells if c.status == "failed"]
    for c in failed:
        out.print(f"[red]failed[/red] {c.label}: {c.error}" + (f"\n  logs: {' '.join(c.logs)}" if c.logs else ""))
    if failed:
        raise typer.Exit(1)


def _quiet_unless_main(dist):
    """Data-parallel ranks other than 0 log warnings only (rank 0 reports progress and results)."""
    if not dist.is_main:
        import logging

        logging.getLogger().setLevel(logging.WARNING)
    return dist


def _torchrun(nproc: int) -> int:
    """Run this very command again under ``torchrun --standalone --nproc-per-node N -m natbench``."""
    import subprocess

    args, skip = [], False
    for a in _ARGV:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "natbench", *args]
    return subprocess.call(cmd)


def _sweep_sets(sweep: List[str]) -> list[tuple[str, ...]]:
    """``["nat.omega=0.006,0.06", "trades.beta=1,6"]`` -> one tuple of ``--set`` strings per combination."""
    from .sweep import grid_sets

    return grid_sets(sweep, "--sweep")


@app.command("eval")
def eval_(
    run_id: Optional[str] = typer.Argument(None, help="A run id (a directory under the results root); or --task with --model"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="With --model: the task to evaluate an outside model on"),
    model: Optional[str] = typer.Option(None, "--model", help="An outside model: file.py:factory, package.module:factory, timm:NAME, torchvision:NAME, torchscript:FILE, robustbench:NAME (docs/external.md)"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="With --model: a state dict (.pt/.pth with weights_only=True, or .safetensors)"),
    name: Optional[str] = typer.Option(None, "--name", help="With --model: the leaderboard name (default: from the spec)"),
    normalize: str = typer.Option("none", "--normalize", help="With --model: none, or MEAN,STD (per channel: m1,..,mC,s1,..,sC) applied to the [0,1] pixels inside the model"),
    suite: Optional[str] = typer.Option(None, "--suite", help="Suite to run: a name or a path to a suite YAML (default: the run's own)"),
    checkpoint: str = typer.Option("both", "--checkpoint", help="best | last | both (the same epoch is evaluated once)"),
    device: str = DeviceOpt,
    root: Optional[Path] = RootOpt,
    db: Optional[str] = DbOpt,
    data_root: Optional[str] = DataRootOpt,
    eval_bf16: bool = typer.Option(False, "--eval-bf16", help="Evaluate under bf16 autocast (CUDA only; recorded with every result)"),
    force: bool = typer.Option(False, "--force", help="A checkpoint that differs from the recorded one is evaluated as a new model, replacing all its results"),
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Evaluate a finished run again (another suite, or one checkpoint) and add the results; or, with
    --task and --model, an outside model (an external run; evaluating it again adds missing attacks)."""
    if model is not None or task is not None:
        _threads(threads)
        return _eval_external(run_id, task, model, weights, name, normalize, suite, device, root, db, data_root)
    if run_id is None:
        raise ConfigError("natbench eval: give a RUN_ID, or --task T --model SPEC for an outside model")
    from .config import from_dict
    from .registry import get_registry
    from .resolve import check_suite, data_root as resolve_data_root, load_suite, task_kind_cls
    from .runner import CHECKPOINTS, Runner, pick_device, run_from_dir
    from .taskspec import SuiteSpec
    from .ui import RichReporter, setup_logging

    if checkpoint not in (*CHECKPOINTS, "both"):
        raise ConfigError(f"--checkpoint {checkpoint!r}: expected best, last or both")
    reg = get_registry()
    _threads(threads)
    r = run_from_dir(_root(root), run_id, reg)
    s = load_suite(reg, suite) if suite else from_dict(SuiteSpec, r.config["suite"], "suite")
    check_suite(reg, s, r.plan, task_kind_cls(reg, r.spec), r.spec)
    setup_logging()
    from .distributed import Dist

    runner = Runner(_root(root), resolve_data_root(data_root), pick_device(device), RichReporter(), reg, eval_bf16=eval_bf16,
                    db=db, dist=_quiet_unless_main(Dist.from_env(device)))
    if runner.store.get_run(run_id) is None:
        from .errors import RunError

        raise RunError(f"run '{run_id}' is not complete in {runner.store.path}; finish it first with natbench run")
    cks = CHECKPOINTS if checkpoint == "both" else (checkpoint,)
    from .evaluate import add_suite

    add_suite(runner, r, run_id, s, cks, force=force, note_numerics=True)  # every file verified before any compute
    if runner.dist.is_main:  # data-parallel: rank 0 records and prints
        _print_leaderboard(runner.store, r.task, "table")


def _eval_external(run_id, task, model, weights, name, normalize, suite, device, root, db, data_root) -> None:
    """``natbench eval --task T --model SPEC ...`` (natbench.api.evaluate; docs/external.md)."""
    if run_id is not None or task is None or model is None:
        raise ConfigError("natbench eval: an outside model needs --task and --model (and no RUN_ID); "
                          "e.g. natbench eval --task digits --model my_model.py:build --weights w.pt")
    from .api import evaluate
    from .ui import RichReporter, setup_logging

    setup_logging()
    res = evaluate(model, task, suite, data_root=data_root, weights=weights, name=name, normalize=normalize,
                   root=_root(root), db=db, device=device, reporter=RichReporter())
    from .store import Store, store_url

    _print_leaderboard(Store(store_url(_root(root), db)), res.task, "table")


@app.command()
def leaderboard(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Only this task (default: every task)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | md | csv | json | html (html: the full page --write writes)"),
    write: bool = typer.Option(False, "--write", help="Write <out>/<task>.md/.csv/.json (with --format html also the <task>.html page)"),
    root: Optional[Path] = RootOpt,
    db: Optional[str] = DbOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Directory for --write (default: <root>/leaderboards)"),
    columns: str = typer.Option("auto", "--columns", help="Terminal table: auto (the headline view when the table is wider "
                                "than the terminal) | headline (clean, headline attack, worst-case, flags) | all"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Published numbers (RobustBench model_info JSON: a file, "
                                             "a list, or a directory) shown as rows marked reported (docs/external.md)"),
) -> None:
    """Print the leaderboard: one row per (task, defense, profile, variant, checkpoint), mean over seeds ± 95 % interval."""
    from . import leaderboard as lb
    from .store import Store, store_exists, store_url

    if fmt not in ("table", *lb.FORMATS):
        raise ConfigError(f"--format {fmt!r}: expected one of table, {', '.join(lb.FORMATS)}")
    if columns not in ("auto", "headline", "all"):
        raise ConfigError(f"--columns {columns!r}: expected auto, headline or all")
    if not store_exists(_root(root), db):
        from .errors import RunError

        raise RunError(f"no results store at {store_url(_root(root), db)}; run something first, "
                       f"e.g. natbench run --task digits --defense vanilla")
    store = Store(store_url(_root(root), db), readonly=True)  # a reading command never writes the store
    tasks = [task] if task else lb.tasks(store)
    if write:  # task names become file names under --out
        from .safety import check_name

        for t in tasks:
            check_name("--task", t)
    if write:
        for t in tasks:
            for p in lb.write(store, out_dir or _root(root) / "leaderboards", t,
                              lb.WRITE_FORMATS_HTML if fmt == "html" else lb._WRITE_FORMATS):
                print(f"wrote {p}", file=sys.stderr)
    if fmt in ("csv", "json") and len(tasks) > 1:
        import pandas as pd

        from .reference import apply as with_reference

        frames = [with_reference(lb.table(store, t), store, t, reference).assign(task=t) for t in tasks]
        df = pd.concat(frames, ignore_index=True)
        df = df[["task", *[c for c in df.columns if c != "task"]]]
        sys.stdout.write(lb.render(df, fmt))
        return
    for t in tasks:
        _print_leaderboard(store, t, fmt, columns, reference)


def _print_leaderboard(store, task: str, fmt: str, columns: str = "auto", reference: Optional[Path] = None) -> None:
    from . import leaderboard as lb
    from .reference import apply as with_reference

    df = with_reference(lb.table(store, task), store, task, reference)
    if fmt != "table":
        text = lb.html_page(store, task, df) if fmt == "html" else lb.render(df, fmt)  # html: the page --write writes
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    metrics = df.attrs.get("metric", "accuracy").split("/")
    key_cols = [c for c in ("defense", "source", "profile", "variant", "checkpoint", "seeds", "reference") if c in df.columns]
    flagged = "flags" in df.columns and bool((df["flags"] != "").any())
    recs = df.to_dict("records")

    def grouped(cols: list[str]) -> dict[str, list[str]]:
        # several metrics (re-id's mAP and rank-1): one "mAP/rank1" cell per attack, as the papers print them
        groups: dict[str, list[str]] = {}
        for c in cols:
            base = next((c.replace(f" {m}", "", 1) for m in metrics if len(metrics) > 1 and f" {m}" in c), c)
            groups.setdefault(base, []).append(c)
        return groups

    def width(groups: dict[str, list[str]]) -> int:
        cells = [[str(r[c]) for r in recs] + [c] for c in key_cols + (["flags"] if flagged else [])]
        cells += [["/".join(lb.cell(r, c) for c in cols) for r in recs] + [base] for base, cols in groups.items()]
        return sum(max(map(len, col)) + 3 for col in cells) + 1

    groups = grouped(lb.value_columns(df))
    headline = columns == "headline" or (columns == "auto" and width(groups) > out.width)
    if headline:
        groups = grouped(lb.headline_columns(df))
    what = ("headline view: clean, headline attack, worst case; --columns all for every column" if headline
            else "± = 95 % interval; avg over " + (", ".join(df.attrs.get("avg_attacks", [])) or "no attack"))
    table = Table(title=f"{task} — {'/'.join(metrics)} (%) on the test set, sorted by {df.attrs.get('sort_by') or 'defense'} ({what})",
                  title_justify="left")
    for c in key_cols:  # names are never cut: pgd-at, pgd-at+nat and pgd-at+myreg must stay apart
        table.add_column(c, justify="left", no_wrap=True, min_width=max(len(c), *(len(str(r[c])) for r in recs)))
    for base in groups:
        table.add_column(base, justify="right", min_width=len(base))
    if flagged:
        table.add_column("flags", justify="left")
    for r in recs:
        cells = [str(r[c]) for c in key_cols] + ["/".join(lb.cell(r, c) for c in cols) for cols in groups.values()]
        if flagged:
            cells.append(f"[yellow]{r['flags']}[/yellow]" if r["flags"] else "")
        table.add_row(*cells)
    out.print(table)


@app.command()
def report(
    run_id: str = typer.Argument(..., help="A finished run id (a directory under the results root)"),
    compare: List[str] = typer.Option([], "--compare", "-c", help="Another run of the same task, shown side by side (repeatable)"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="Checkpoint the analyses use: best | last"),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", help="Test samples the analyses use (default: all)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    root: Optional[Path] = RootOpt,
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset root (default: $NATBENCH_DATA or ./data)"),
    db: Optional[str] = DbOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Write <root>/RUN_ID/report/index.html (self-contained) and its PNGs: training curves, the NAT
    paper's analyses, suite results with sanity flags, provenance."""
    from .report import ReportOptions, build_report
    from .resolve import data_root as resolve_data_root
    from .runner import pick_device
    from .ui import RichReporter, setup_logging

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"--max-samples {max_samples}: expected a positive number of test samples")
    from .safety import check_run_id

    for rid in (run_id, *compare):  # before any file is opened
        check_run_id(rid)
    _threads(threads)
    setup_logging()
    path = build_report(_root(root), run_id, compare, data_root=resolve_data_root(data_root), device=pick_device(device),
                        reporter=RichReporter(), options=ReportOptions(checkpoint=checkpoint, max_samples=max_samples), db=db)
    print(f"wrote {path}", file=sys.stderr)


@app.command()
def ablation(
    task: str = typer.Option(..., "--task", "-t", help="Task name or path to a task YAML"),
    defense: str = typer.Option(..., "--defense", "-d", help="Defense spec, e.g. nat"),
    param: str = typer.Option(..., "--param", help="Config key to vary, e.g. nat.omega"),
    values: str = typer.Option(..., "--values", help="Comma-separated values, e.g. 0,0.02,0.04,0.06"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Training profile of the task spec"),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of every run"),
    set_: List[str] = typer.Option([], "--set", help="Other config overrides for every run: key.path=value (repeatable)"),
    suite: Optional[str] = SuiteOpt,
    device: str = DeviceOpt,
    root: Optional[Path] = RootOpt,
    data_root: Optional[str] = DataRootOpt,
    db: Optional[str] = DbOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Train DEFENSE once per value of PARAM (NAT Fig. 2) and plot best/last clean and robust accuracy
    against it: <root>/ablation-<task>-<param>.png and .csv."""
    from .report import ablation as run_ablation
    from .resolve import data_root as resolve_data_root
    from .runner import pick_device
    from .ui import RichReporter, setup_logging

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    _threads(threads)
    droot = resolve_data_root(data_root)
    setup_logging()
    res = run_ablation(task, defense, param, values, root=_root(root), data_root=droot, profile=profile, seed=seed,
                       sets=set_, suite=suite, device=pick_device(device), reporter=RichReporter(), db=db)
    table = Table(title=f"ablation of {param} ({defense}); robust = {res.robust_label}", title_justify="left")
    for c in ("value", "run_id", "best_clean", "best_robust", "last_clean", "last_robust"):
        table.add_column(c, justify="left" if c in ("value", "run_id") else "right")
    for row in res.frame.itertuples(index=False):
        table.add_row(str(row.value), row.run_id, *(f"{v:.2f}" for v in (row.best_clean, row.best_robust,
                                                                          row.last_clean, row.last_robust)))
    out.print(table)
    print(f"wrote {res.png}\nwrote {res.csv}", file=sys.stderr)


@data_app.command("fixture")
def fixture(dataset: str = typer.Argument(..., help="Dataset name"),
            out_dir: Path = typer.Option(..., "--out", help="Directory to write into")) -> None:
    """Write a small synthetic copy of DATASET in its real on-disk format."""
    from .data import FIXTURES
    from .errors import unknown

    if dataset not in FIXTURES:
        raise unknown("fixture dataset", dataset, FIXTURES)
    from .registry import load_target

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file, not a directory; give a directory (it is created if missing)")
    path = load_target(FIXTURES[dataset])(out_dir)
    print(f"wrote {dataset} fixture to {path}", file=sys.stderr)


try:  # typer >= 0.24 carries its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import ClickException as _TyperClickException
    from typer._click.exceptions import NoArgsIsHelpError as _NoArgsIsHelp
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperClickException = click.ClickException
    _NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())
_CLICK_ERRORS = tuple({click.ClickException, _TyperClickException})
_EXITS = tuple({click.exceptions.Exit, typer.Exit})
_ABORTS = tuple({click.exceptions.Abort, typer.Abort, KeyboardInterrupt})


#: the arguments of this invocation (``--nproc`` re-runs them under torchrun)
_ARGV: list[str] = []


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user errors -> one red line and exit 2."""
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)

    class _Err:  # rich's stderr Console, imported only when there is something to print
        def print(self, *args, **kwargs) -> None:
            from rich.console import Console

            Console(stderr=True, soft_wrap=True).print(*args, **kwargs)

    err = _Err()
    try:
        rv = app(args=argv, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except NatbenchError as e:
        from rich.markup import escape

        err.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False)  # "[robustbench]" is text
        return 2
    except _EXITS as e:
        return getattr(e, "exit_code", 0)
    except _ABORTS:
        err.print("[red]aborted[/red]")
        return 130
    except OSError as e:  # a file system refusal (read-only --root, a file where a folder belongs): one line
        if e.filename is None:
            raise
        err.print(f"[red]error:[/red] {e.filename}: {e.strerror or e}; check the path and its permissions, "
                  f"or use another --root / --out", markup=True, highlight=False)
        return 2
    except _CLICK_ERRORS as e:
        ctx = getattr(e, "ctx", None)
        if _NoArgsIsHelp and isinstance(e, _NoArgsIsHelp) and ctx is not None:
            print(ctx.get_help())
            return 0
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        err.print(f"[red]error:[/red] {e.format_message()}{where}", markup=True, highlight=False)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
