"""Sweeps: a grid of runs (tasks x defenses x seeds x ``--set-grid`` values) executed through submitit.

:func:`plan_sweep` resolves every cell first (a bad name or value fails before anything runs), drops
the cells already complete in the store (same provenance hash) and computes the *dependency stages*:
the models the cells need (NAT's adversary, a transfer surrogate), deduplicated across cells (ten NAT
cells of a task share one vanilla adversary), deepest first. :func:`run_sweep` runs stage after stage,
each stage's jobs in parallel through a submitit executor:

- ``local``: one subprocess per job on this machine (submitit's LocalExecutor), at most ``parallel``
  at a time (``parallel = 1``: sequential);
- ``debug``: in this process, one after the other (submitit's DebugExecutor; for tests and pdb);
- ``slurm``: one SLURM job per run (an array per stage, ``array_parallelism`` at a time), with the
  partition, GPUs per job and time limit as options. A job is :class:`submitit.helpers.Checkpointable`:
  on preemption or timeout submitit requeues it, and the runner resumes from the run's last
  ``state.pt`` (every epoch is saved atomically), and a killed evaluation from ``eval-partial.pt``.

A run whose dependency is still missing when its stage starts (because the dependency's job failed)
trains it itself, so a stage never silently skips work; a failed job is listed with its log files
at the end. Progress (jobs done / failed) and the summary table are printed with rich.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "debug", "slurm")
MAX_DEPTH = 16  # dependency stages deeper than this are a cycle


@dataclass
class Cell:
    """One run of the sweep (or a dependency stage's run): its resolved config and where it stands."""

    run_id: str
    config: dict  # the resolved config (what ``config.yaml`` holds); jobs re-validate it
    stage: int  # 0 = the grid's own cells; 1, 2, ... = dependency stages (run before, deepest first)
    label: str  # task / defense / seed / variant, for the table
    status: str = "pending"  # pending | skipped (complete in the store) | done | failed
    seconds: float = 0.0
    logs: tuple[str, ...] = ()
    error: str = ""
    needs: set[str] = field(default_factory=set)  # run ids of the dependency runs it uses


@dataclass
class Plan:
    cells: list[Cell] = field(default_factory=list)

    def stages(self) -> list[list[Cell]]:
        """The cells to run, grouped by stage, dependencies (highest stage) first."""
        todo = [c for c in self.cells if c.status == "pending"]
        return [[c for c in todo if c.stage == s] for s in sorted({c.stage for c in todo}, reverse=True)]


def grid_sets(set_grid: Iterable[str], flag: str = "--set-grid") -> list[tuple[str, ...]]:
    """``["nat.omega=0.006,0.06", "trades.beta=1,6"]`` -> one tuple of ``--set`` strings per combination
    (``natbench sweep --set-grid`` and ``natbench run --sweep``; ``flag`` names the option in errors)."""
    axes = []
    for item in set_grid:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(vals):
            raise ConfigError(f"{flag} {item!r}: expected key.path=v1,v2,..., e.g. {flag} nat.omega=0.006,0.03,0.06")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{flag} {item!r}: a value is listed twice; list each value once")
        axes.append([f"{key.strip()}={v}" for v in vals])
    return [tuple(c) for c in itertools.product(*axes)] if axes else [()]


def plan_sweep(reg, store, tasks: list[str], defenses: list[str], seeds: list[int], *, set_grid: Iterable[str] = (),
               sets: Iterable[str] = (), profile: str | None = None, suite: str | None = None) -> Plan:
    """Resolve the grid, mark the cells complete in ``store`` (None: an empty store), and add the
    dependency runs the remaining cells need as earlier stages (deduplicated by provenance hash)."""
    from .graph import needed_runs
    from .resolve import resolve

    combos = grid_sets(set_grid)
    resolved = [resolve(reg, t, d, profile=profile, seed=s, sets=[*sets, *c], suite=suite)
                for t in tasks for d in defenses for c in combos for s in seeds]  # every check before any run
    plan, seen = Plan(), {}

    def done(h: str) -> bool:
        return store is not None and store.find_complete(h) is not None

    def add(r, stage: int) -> Cell:
        if stage > MAX_DEPTH:
            from .errors import CompositionError

            raise CompositionError(f"{r.run_id}: dependencies nest deeper than {MAX_DEPTH} (a cycle?); check the defense params")
        prev = seen.get(r.config_hash)
        if prev is not None:
            if stage > prev.stage and prev.status == "pending":  # needed by a later stage: must run earlier
                prev.stage = stage
                prev.needs |= _deps(r, stage + 1)
            return prev
        label = f"{r.task} / {r.defense} / seed {r.seed}" + (f" / {r.variant}" if r.variant else "")
        cell = Cell(r.run_id, r.config, stage, label, status="skipped" if done(r.config_hash) else "pending")
        seen[r.config_hash] = cell
        plan.cells.append(cell)
        if cell.status == "pending":
            cell.needs = _deps(r, stage + 1)
        return cell

    def _deps(r, stage: int) -> set[str]:
        return {add(dep_r, stage).run_id for dep_r in needed_runs(reg, r)}  # natbench.graph: the runner's graph

    for r in resolved:
        add(r, 0)
    return plan


class RunJob:
    """A picklable job: re-validate ``config`` and run it with a :class:`natbench.runner.Runner`.

    Checkpointable: when SLURM preempts or times out the job, submitit requeues this same call;
    the runner then resumes from the run's last saved epoch (``state.pt``)."""

    def __init__(self, config: dict, root: str, db: str | None, data_root: str | None, device: str):
        self.config, self.root, self.db, self.data_root, self.device = config, root, db, data_root, device

    def __call__(self) -> str:
        from .registry import get_registry
        from .resolve import from_run_config
        from .runner import Runner, pick_device
        from .threads import apply

        apply(None)  # the threads the sweep command exported ($NATBENCH_THREADS)
        reg = get_registry()
        r = from_run_config(reg, self.config)
        runner = Runner(Path(self.root), Path(self.data_root) if self.data_root else None, pick_device(self.device),
                        registry=reg, db=self.db)
        return runner.run(r)

    def checkpoint(self, *args: Any, **kwargs: Any):  # submitit's requeue hook (helpers.Checkpointable)
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def make_executor(kind: str, folder: Path, *, partition: str | None = None, gpus: int = 1, time_min: int = 600,
                  array_parallelism: int = 16, cpus: int | None = None, mem_gb: int | None = None) -> Any:
    """A submitit executor: ``local`` (subprocesses), ``debug`` (in process) or ``slurm``."""
    import submitit

    if kind not in EXECUTORS:
        raise ConfigError(f"--executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params: dict[str, Any] = {"timeout_min": int(time_min), "name": "natbench"}
    if kind == "slurm":
        params.update(slurm_array_parallelism=int(array_parallelism), gpus_per_node=int(gpus), tasks_per_node=1,
                      nodes=1, slurm_additional_parameters={"requeue": True})
        if partition:
            params["slurm_partition"] = partition
        if cpus:
            params["cpus_per_task"] = int(cpus)
        if mem_gb:
            params["mem_gb"] = int(mem_gb)
    ex.update_parameters(**params)
    return ex


def run_sweep(plan: Plan, executor: Any, *, root: Path, db: str | None, data_root: str | None, device: str,
              parallel: int = 1, reporter: Any = None, poll_s: float = 0.5) -> Plan:
    """Run the plan's stages in order; within a stage at most ``parallel`` jobs in flight (SLURM:
    one array per stage, its own ``array_parallelism``). Updates and returns the cells' status."""
    slurm = getattr(executor, "cluster", "") == "slurm"
    total = sum(len(s) for s in plan.stages())
    bar = reporter.start("sweep", total) if reporter is not None else None
    failed: set[str] = set()
    for stage in plan.stages():
        for c in stage:  # a run whose dependency failed would train it itself, racing its siblings: skip it
            bad = sorted(c.needs & failed)
            if bad:
                c.status, c.error = "failed", f"dependency {', '.join(bad)} failed"
        failed |= {c.run_id for c in stage if c.status == "failed"}
        stage = [c for c in stage if c.status == "pending"]
        jobs = [RunJob(c.config, str(root), db, data_root, device) for c in stage]
        if slurm:  # one array job per stage; SLURM schedules it
            with executor.batch():
                handles = [executor.submit(j) for j in jobs]
            pairs = list(zip(stage, handles))
            starts = {c.run_id: time.perf_counter() for c in stage}
            for cell, job in pairs:
                _finish(cell, job, starts[cell.run_id])
                if reporter is not None:
                    reporter.advance(bar, 1, failed=sum(c.status == "failed" for c in plan.cells))
            failed |= {c.run_id for c in stage if c.status == "failed"}
            continue
        queue = list(zip(stage, jobs))
        running: list[tuple[Cell, Any, float]] = []
        while queue or running:
            while queue and len(running) < max(1, parallel):
                cell, job = queue.pop(0)
                running.append((cell, executor.submit(job), time.perf_counter()))
            for item in list(running):
                cell, handle, t0 = item
                if getattr(executor, "cluster", "") == "debug" or handle.done():
                    _finish(cell, handle, t0)
                    running.remove(item)
                    if reporter is not None:
                        reporter.advance(bar, 1, failed=sum(c.status == "failed" for c in plan.cells))
            if running:
                time.sleep(poll_s)
        failed |= {c.run_id for c in stage if c.status == "failed"}
    if reporter is not None:
        reporter.stop(bar)
    return plan


def _finish(cell: Cell, handle: Any, t0: float) -> None:
    """Wait for ``handle``; record the cell's status, time and log files."""
    try:
        handle.result()
        cell.status = "done"
    except Exception as e:  # noqa: BLE001 - a failed job is reported in the summary, not raised
        cell.status = "failed"
        cell.error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    cell.seconds = round(time.perf_counter() - t0, 1)
    paths = getattr(handle, "paths", None)
    if paths is not None:
        cell.logs = tuple(str(p) for p in (paths.stdout, paths.stderr))
