"""The story of a run: dependencies -> train -> evaluate -> record (:meth:`Runner.run`, top to bottom).

- Dependencies (NAT's adversary, a transfer surrogate: :mod:`natbench.graph`) are ordinary runs of
  the same task, training profile and seed with another defense; a complete run with the same
  provenance hash is reused, so many NAT runs share one vanilla adversary. A dependency is trained
  and handed on at once; its own evaluation runs after the outermost run's.
- Training (:mod:`natbench.training`) resumes from ``<root>/<run_id>/state.pt`` after a kill and
  selects the ``best`` and ``last`` checkpoints.
- Evaluation (:mod:`natbench.suite`) runs the suite, the sanity checks and their escalations,
  resumable from ``eval-partial.pt``.
- Nothing is written to the store until the whole run (training and every evaluation) finished;
  the run row and all its results go in one transaction.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from . import provenance
from .compose import Composite
from .config import to_dict
from .distributed import Dist
from .suite import CHECKPOINTS, ESCALATED, PARTIAL, Job, SuiteEvaluator, add_suite  # noqa: F401 - re-exported
from .graph import dependency_run, is_run
from .integrity import sha256_file
from .leaderboard_facts import facts as run_facts
from .lock import locked_run_dir
from .provenance import git_revision, versions  # noqa: F401 - re-exported (natbench.api)
from .registry import Registry, get_registry
from .resolve import Resolved
from .run_model import build_task, load_model, run_from_dir  # noqa: F401 - run_from_dir: where callers have always imported it from
from .safety import atomic_save, atomic_write, run_dir as safe_run_dir  # noqa: F401 - atomic_save re-exported
from .store import RunRecord, Store, open_store, store_exists
from .threads import numerics
from .training import (Trained, Trainer, cuda_speedups, derive_seed, lr_at, make_optimizer,  # noqa: F401 - re-exported
                    momentum_at, train_step)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- progress
class Reporter:
    """Progress hooks; the CLI passes a rich implementation (natbench.ui), tests the silent default."""

    def start(self, description: str, total: int) -> Any:
        return None

    def advance(self, handle: Any, n: int = 1, **info: Any) -> None:
        pass

    def stop(self, handle: Any) -> None:
        pass

    def message(self, text: str) -> None:
        log.info(text)


# ------------------------------------------------------------------------------------- helpers
def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(device)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def prepare_run_dir(root: Path, r: Resolved, force: bool, dist: Dist) -> Path:
    """The run directory with its ``config.yaml`` (``force``: without an earlier attempt's files)."""
    run_dir = safe_run_dir(root, r.run_id)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if force:  # from scratch: drop what an earlier attempt left
            for name in ("state.pt", "best.pt", "last.pt", "record.json", PARTIAL):
                (run_dir / name).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(r.config, sort_keys=False))
    dist.barrier()
    return run_dir


def _check_cuda_options(device: torch.device, sync_bn: bool, eval_bf16: bool) -> None:
    """--sync-bn and --eval-bf16 need a CUDA device: a one-line error on any other."""
    from .errors import ConfigError

    if sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn: torch's SyncBatchNorm runs on CUDA only; drop --sync-bn on CPU")
    if eval_bf16 and device.type != "cuda":
        raise ConfigError(f"--eval-bf16: bf16 autocast evaluation needs a CUDA device (device is {device}); "
                          f"drop --eval-bf16 or use --device cuda")


# ------------------------------------------------------------------------------------- runner
@dataclass
class Runner:
    root: Path
    data_root: Path | None = None
    device: torch.device = torch.device("cpu")
    reporter: Reporter = Reporter()
    registry: Registry | None = None
    eval_bf16: bool = False  # evaluate (attacks included) under bf16 autocast; CUDA only, recorded per result
    db: str | None = None  # results store URL (PostgreSQL); None: $NATBENCH_DB or <root>/natbench.sqlite
    dist: Dist = field(default_factory=Dist)  # data-parallel process group (torchrun); one process by default
    sync_bn: bool = False  # data-parallel: SyncBatchNorm (global-batch statistics; CUDA only)
    dependency_eval: bool = True  # evaluate dependency runs (after their dependent's evaluation); --no-dependency-eval

    def __post_init__(self):
        self.root = Path(self.root)
        self.device = self.dist.device(self.device)
        _check_cuda_options(self.device, self.sync_bn, self.eval_bf16)
        if not self.dist.is_main:  # one progress display: rank 0's
            self.reporter = Reporter()
        self.registry = self.registry or get_registry()
        self._store: Store | None = None
        self._stack: list[str] = []  # config hashes of the runs waiting for a dependency (cycle guard)
        self._deferred: list[tuple[Resolved, str, str]] = []  # dependency runs to evaluate last (r, run id, dependent)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.root, self.db)
        return self._store

    def task(self, r: Resolved) -> Any:
        return build_task(r, self.data_root, self.registry)

    # --------------------------------------------------------------------------------- the story
    def run(self, r: Resolved, *, force: bool = False, dependent: str | None = None) -> str:
        """Train and evaluate ``r`` (dependencies first) unless a complete identical run exists; one
        process at a time per run directory (:mod:`natbench.lock`: a second start waits, then reuses).

        A dependency run (``dependent``: the run waiting for its checkpoint) is trained and handed
        on at once; its own evaluation runs after the outermost run's (:meth:`_evaluate_deferred`)."""
        with locked_run_dir(safe_run_dir(self.root, r.run_id), self.dist.is_main, self.reporter.message):
            return self._run(r, force=force, dependent=dependent)

    def _run(self, r: Resolved, *, force: bool = False, dependent: str | None = None) -> str:
        now = numerics(self.device)
        existing = self._existing(r, now)
        if existing and not force:
            return self._reuse(r, existing, now, dependent)
        if existing and (not existing.same or existing.run_id != r.run_id):  # other numerics: a new result, kept beside
            r = provenance.as_new_result(r, now)
            if not existing.same:
                self.reporter.message(f"{r.run_id}: {existing.run_id} was computed with {provenance.describe(existing.numerics)}; "
                                      f"recording this run ({provenance.describe(now)}) as a separate result")
        # 1. dependencies: the models the defense's components need, trained (or reused) and bound
        task = self.task(r)
        task.check_data()
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        composite = Composite.build(r.plan, r.params)
        _, channels_last = cuda_speedups(r.profile, self.device)
        for component, dep in composite.dependencies():
            model = self.dependency_model(r, dep)
            component.bind(dep.role, model.to(memory_format=torch.channels_last) if channels_last else model)
        # 2. train
        run_dir = prepare_run_dir(self.root, r, force, self.dist)
        self.reporter.message(f"run {r.run_id} ({provenance.describe(now)}) in {run_dir}")
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        trained = Trainer(r, task, composite, run_dir, device=self.device, dist=self.dist, reporter=self.reporter,
                          sync_bn=self.sync_bn).train()
        t1 = time.perf_counter()
        # 3. evaluate (a dependency: after the run that needs it)
        rows = ([], [], []) if dependent is not None else self.evaluate(r, task, run_dir)
        t2 = time.perf_counter()
        # 4. record
        record = RunRecord(
            run_id=r.run_id, task=r.task, defense=r.defense, profile=r.profile_name, seed=r.seed,
            config_hash=r.config_hash, git_rev=git_revision(), versions=versions(),
            device=provenance.device_column(now, trained.fast),
            started=started, finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            wall_train_s=round(t1 - t0 + trained.resumed_s, 3), wall_eval_s=round(t2 - t1, 3), config=r.config,
            suite=[] if dependent is not None else ["clean", *(a.id for a in r.suite.attacks)], variant=r.variant,
        )
        self._record(r, task, record, run_dir, rows, trained, now)
        if dependent is not None:
            self._deferred.append((r, r.run_id, dependent))
            self.reporter.message(f"{r.run_id}: trained in {t1 - t0:.1f}s; checkpoint handed on to {dependent}, "
                                  f"its own evaluation runs after {dependent}'s")
            return r.run_id
        self.reporter.message(f"{r.run_id}: complete (train {t1 - t0:.1f}s, eval {t2 - t1:.1f}s)")
        self._evaluate_deferred()
        return r.run_id

    def _existing(self, r: Resolved, now: dict[str, Any]) -> Any:
        """The complete run with ``r``'s provenance hash (:func:`natbench.provenance.find_existing`),
        rank 0's answer on every rank; None when there is none (or no store yet)."""
        existing = None
        if self.dist.is_main:
            fresh = self._store is None and not store_exists(self.root, self.db)
            existing = None if fresh else provenance.find_existing(self.store, r.config_hash, r.task, now)  # no store file for a failed first run
        return self.dist.broadcast(existing)  # every rank takes rank 0's decision

    def _reuse(self, r: Resolved, existing: Any, now: dict[str, Any], dependent: str | None) -> str:
        """A complete identical run: hand it on (a dependency) or add the suite's missing attacks."""
        other = "" if existing.same else (f", computed with {provenance.describe(existing.numerics)}; now "
                                          f"{provenance.describe(now)}; --force adds a result with these")
        self.reporter.message(f"{existing.run_id}: already complete (same config{other}); reusing it. Use --force to run again.")
        if dependent is not None:
            self._deferred.append((r, existing.run_id, dependent))
        else:
            add_suite(self, r, existing.run_id, missing_only=True)  # the suite's attacks it has not seen yet
            self._evaluate_deferred()
        return existing.run_id

    def _record(self, r: Resolved, task: Any, record: RunRecord, run_dir: Path, rows: tuple, trained: Trained,
                now: dict[str, Any]) -> None:
        """The run row and all its results in one store transaction, then ``record.json`` (rank 0)."""
        results, flags, checks = rows
        if self.dist.is_main:
            shas = {c: sha256_file(run_dir / f"{c}.pt") for c in CHECKPOINTS}  # what the results were computed from
            self.store.record_run(record, results, flags, checks, checkpoints=shas,
                                  facts=run_facts(task, r.suite, results, self.registry))  # what the leaderboard reads
            (run_dir / PARTIAL).unlink(missing_ok=True)
            atomic_write_text(run_dir / "record.json", json.dumps({
                **to_dict(record), "history": trained.history, "processes": self.dist.world, "checkpoints_sha256": shas,
                "fast_path": trained.fast, "numerics": now,
                "results": [to_dict(x) for x in results], "checks": [to_dict(x) for x in checks],
            }, indent=1, default=str))
        self.dist.barrier()

    # --------------------------------------------------------------------------------- dependencies
    def _evaluate_deferred(self) -> None:
        """Evaluate the dependency runs trained (or reused) for the runs just finished, unless
        ``dependency_eval`` is off; only the outermost run does it (nested runs are dependencies)."""
        if self._stack:
            return
        while self._deferred:
            dep_r, run_id, dependent = self._deferred.pop(0)
            if not self.dependency_eval:
                self.reporter.message(f"{run_id}: not evaluated (--no-dependency-eval; it was trained as a dependency "
                                      f"of {dependent}); natbench eval {run_id} evaluates it later")
                continue
            self.reporter.message(f"{run_id}: evaluating it now (a dependency of {dependent}, evaluated after it)")
            add_suite(self, dep_r, run_id, missing_only=True)

    def dependency_model(self, r: Resolved, dep: Any, evaluated: str | None = None) -> torch.nn.Module:
        """The model behind a component's or an attack's :class:`~natbench.contracts.Dependency`: a
        run of ``dep.defense`` on ``r``'s task, profile and seed (trained now unless a complete run
        with the same provenance hash exists), its untrained seeded initialisation (checkpoint
        ``init``), or the checkpoint of an existing run ``dep.run``. ``evaluated`` is the directory
        of the run being evaluated: an attack whose dependency is that very run gets its own model
        (a transfer attack whose surrogate is the evaluated run itself)."""
        from .errors import CompositionError, RunError

        if dep.run:
            if not store_exists(self.root, self.db) or self.store.get_run(dep.run) is None:
                raise RunError(f"{r.run_id}: its {dep.role} run '{dep.run}' is not a complete run in {self.store.path}; "
                               f"list runs with: natbench leaderboard --format csv")
            dep_r = run_from_dir(self.root, dep.run, self.registry)
            return self.load_model(self.task(dep_r), dep.run, dep.checkpoint)
        dep_r = dependency_run(self.registry, r, dep)
        dep_task = self.task(dep_r)
        if not is_run(dep):  # checkpoint "init": an untrained model, seeded apart from the target's own init
            self.reporter.message(f"{r.run_id}: {dep.role} model is an untrained {dep_r.spec.model.arch}")
            torch.manual_seed(derive_seed(dep_r.seed, "init", "dependency", dep.role))
            return dep_task.build_model().to(self.device)
        if evaluated is not None and dep_r.config_hash == r.config_hash:
            self.reporter.message(f"{r.run_id}: its {dep.role} model is the run itself ({dep.checkpoint} checkpoint)")
            return self.load_model(dep_task, evaluated, dep.checkpoint, verified=True)  # checked by the evaluation
        if dep_r.config_hash in (*self._stack, r.config_hash):
            raise CompositionError(f"{r.run_id}: its {dep.role} dependency ({dep_r.defense}) needs itself; "
                                   f"check defense_params / --set of {dep.defense}")
        self.reporter.message(f"{r.run_id}: needs {dep.role} model ({dep_r.defense}, {dep.checkpoint} checkpoint) -> {dep_r.run_id}")
        self._stack.append(r.config_hash)
        try:
            dep_id = self.run(dep_r, dependent=r.run_id)
        finally:
            self._stack.pop()
        return self.load_model(dep_task, dep_id, dep.checkpoint)

    def load_model(self, task: Any, run_id: str, checkpoint: str, verified: bool = False) -> torch.nn.Module:
        """A run's checkpoint on this device (:func:`natbench.run_model.load_model`: checked against the
        store's sha256 when the run is finished there, unless ``verified``)."""
        store = self.store if store_exists(self.root, self.db) else None
        return load_model(task, self.root, run_id, checkpoint, device=self.device, store=store, verified=verified)

    # --------------------------------------------------------------------------------- evaluate
    def evaluate(self, r: Resolved, task: Any, run_dir: Path, checkpoints: tuple[str, ...] = CHECKPOINTS,
                 suite=None, external: Any = None) -> tuple[list, list, list]:
        """Evaluate ``checkpoints`` of the run in ``run_dir`` under clean inputs and every attack of
        ``suite`` (default: the run's), then the sanity checks and their escalations
        (:class:`natbench.suite.SuiteEvaluator`; ``external``: an outside model instead)."""
        return SuiteEvaluator(r, task, run_dir, registry=self.registry, device=self.device, dist=self.dist,
                              reporter=self.reporter, dependency_model=self.dependency_model,
                              eval_bf16=self.eval_bf16).evaluate(checkpoints, suite, external)

