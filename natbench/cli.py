"""The ``natbench`` command line (the contract scripts and users rely on; see DESIGN.md).

Exit codes: 0 success; 2 a user error, printed as one red line (what, where, one fix); 1 a bug
(full traceback). ``--format csv``/``json`` print machine-readable output on stdout and nothing
else (progress and messages go to stderr).

Start-up is kept fast: this module imports typer and natbench's torch-free modules only; torch,
pandas, rich's tables and the plugins are imported inside the commands that need them, so
``--help``, ``--version``, ``list`` and argument errors answer without loading torch.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from .cli_eval import quiet_unless_main as _quiet_unless_main
from .cli_output import Table, out, print_leaderboard as _print_leaderboard
from .cli_registry import LIST_KINDS, check_names as _check_names
from .errors import ConfigError, NatbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="natbench: train a defense, attack it with a suite, compare on a leaderboard.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthetic fixtures in the real on-disk formats.")
app.add_typer(data_app, name="data")


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


def _threads(threads: Optional[int]) -> int:
    """Validate and apply --threads (natbench.threads) before any work; returns the count."""
    from .threads import apply

    return apply(threads)


def _root(root: Optional[Path]) -> Path:
    return Path(root or os.environ.get("NATBENCH_ROOT") or "runs")


@app.command("list")
def list_(kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(LIST_KINDS)} (default: all)"),
          name: Optional[str] = typer.Argument(None, help="One entry of KIND: its Params (--set keys, defaults, meaning), "
                                                         "a suite's attacks or a task's profiles")) -> None:
    """List registered plugins as a table, or show one entry in detail (natbench list defenses trades)."""
    from .cli_registry import list_entries

    list_entries(kind, name)


@app.command()
def check() -> None:
    """Import every registry entry and check it against its contract (exit 1 if any fails)."""
    from .cli_registry import check_contracts

    if check_contracts():
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
        from .cli_eval import torchrun

        return torchrun(_ARGV, nproc)
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
    from .cli_sweep import sweep as run_sweep_command

    slurm = dict(partition=partition, gpus=gpus, time_min=time_min, array_parallelism=array_parallelism, cpus=cpus,
                 mem_gb=mem_gb)
    if run_sweep_command(tasks, defenses, seeds, set_grid, set_, profile, suite, executor, parallel, slurm, log_dir,
                         device, _root(root), db, data_root, threads):
        raise typer.Exit(1)


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
    threat_model: Optional[str] = typer.Option(None, "--threat-model", help="NORM:EPS to evaluate under (l2:0.5, l1:5, linf:8/255; default: the run's own); stored apart, one leaderboard table per threat model"),
) -> None:
    """Evaluate a finished run again (another suite, or one checkpoint) and add the results; or, with
    --task and --model, an outside model (an external run; evaluating it again adds missing attacks)."""
    if threat_model is not None:
        from .threats import parse

        parse(threat_model)  # a bad value: one line before anything else
        if model is not None or task is not None:
            raise ConfigError("--threat-model: applies to a finished run (natbench eval RUN_ID --threat-model l2:0.5), "
                              "not to an outside model (--model)")
    if model is not None or task is not None:
        from .cli_eval import eval_external

        _threads(threads)
        return eval_external(run_id, task, model, weights, name, normalize, suite, device, _root(root), db, data_root)
    if run_id is None:
        raise ConfigError("natbench eval: give a RUN_ID, or --task T --model SPEC for an outside model")
    from .cli_eval import eval_run

    eval_run(run_id, suite, checkpoint, device, _root(root), db, data_root, eval_bf16, force, threads, threat_model)


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
    threat_model: Optional[str] = typer.Option(None, "--threat-model", help="Only the table of this threat model, NORM:EPS "
                                               "(l2:0.5, linf:8/255); default: one table per threat model evaluated"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Corruptions table: mCE relative to this run "
                                           "(default: the task's vanilla row of the same profile; docs/corruptions.md)"),
) -> None:
    """Print the leaderboard: one table per threat model, one row per (task, defense, profile, variant, checkpoint), mean over seeds ± 95 % interval."""
    from .cli_output import leaderboard as print_leaderboards

    print_leaderboards(task, fmt, write, _root(root), db, out_dir, columns, reference, threat_model, baseline)


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
