"""The plan: model dependencies -> train the target -> select checkpoints -> evaluate -> record.

- Dependencies (NAT's adversary, ...) are ordinary runs of the same task, training profile and seed
  with another defense; a complete run with the same provenance hash is reused, so many NAT runs
  share one vanilla adversary.
- Training writes ``<root>/<run_id>/state.pt`` after every epoch (atomically), so a killed run that is
  started again with the same config resumes from its last finished epoch. Every epoch draws its
  randomness (shuffling, attack starts, dropout) from generators seeded by ``(seed, epoch)``, so a
  resumed run gives exactly the numbers of an uninterrupted one.
- ``best`` is the epoch with the highest validation metric (robust accuracy under a cheap PGD, or
  clean accuracy for defenses whose ``select_on`` is "clean"); ``last`` is the final epoch. The
  validation split is carved from the training set; the test set is only used in evaluation.
- Nothing is written to the store until the whole run (training and every evaluation) finished;
  the run row and all its results go in one transaction.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from . import __version__
from .compose import Composite
from .config import from_dict, to_dict
from .contracts import Batch, LossOut
from .distributed import Dist
from .registry import Registry, get_registry
from .resolve import DEFENSE_OBJECTIVE, Resolved, task_kind_cls, with_defense
from .run_model import run_from_dir  # noqa: F401 - where callers have always imported it from
from .leaderboard_facts import facts as run_facts
from .store import CheckRow, FlagRow, ResultRow, RunRecord, Store, open_store, store_exists
from .integrity import sha256_file, verify
from .lock import locked_run_dir
from .safety import atomic_write, load_state, load_torch, load_weights, run_dir as safe_run_dir
from .checks import SUITE_CHECKS, attack_checks, escalations, model_checks, suite_checks
from . import provenance
from .threads import numerics

log = logging.getLogger(__name__)
CHECKPOINTS = ("best", "last")
#: the id under which the gradient-free Square attack scheduled by a failed masking check is recorded
ESCALATED = "escalated-square"
#: finished evaluations of a run not yet recorded in the store (deleted once they are)
PARTIAL = "eval-partial.pt"
#: the fix named by an unreadable checkpoint's error
_RETRAIN = "restore the file, or train the run again with: natbench run ... --force"


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
def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(device)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a unique temporary file (two writers never share one) and a rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import numpy
    import torchvision

    out = {"natbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:
        import torchattacks

        out["torchattacks"] = torchattacks.__version__
    except Exception:  # noqa: BLE001 - only provenance
        pass
    return out


def lr_at(profile, epoch: float) -> float:
    """The learning rate at (fractional) ``epoch``: ``lr_points`` interpolated linearly (a cyclic
    schedule, set every iteration) or the constant ``lr``, times ``gamma`` per milestone passed."""
    if profile.lr_points:
        ts = [t for t, _ in profile.lr_points]
        lrs = [v for _, v in profile.lr_points]
        base = float(np.interp(epoch, ts, lrs))
    else:
        base = profile.lr
    return base * profile.gamma ** sum(int(epoch) >= m for m in profile.milestones)


def momentum_at(profile, epoch: float) -> float:
    """SGD momentum at (fractional) ``epoch``: with ``cycle_momentum = [base, max]`` it moves against
    ``lr_points`` as torch's ``CyclicLR(cycle_momentum=True)``: ``max - (max - base) * s`` with ``s``
    the position of the interpolated lr between the lowest and the highest lr of ``lr_points``
    (milestone decays do not move it: the references divide the lr by hand, the scheduler's momentum
    stays). Without it, the profile's constant ``momentum``."""
    if not profile.cycle_momentum:
        return profile.momentum
    base, top = profile.cycle_momentum
    lrs = [v for _, v in profile.lr_points]
    lo, hi = min(lrs), max(lrs)
    s = 0.0 if hi == lo else (float(np.interp(epoch, [t for t, _ in profile.lr_points], lrs)) - lo) / (hi - lo)
    return top - (top - base) * s


def make_optimizer(profile, model: torch.nn.Module) -> torch.optim.Optimizer:
    if profile.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=profile.lr, momentum=profile.momentum, weight_decay=profile.weight_decay)


def train_step(composite: Composite, model: torch.nn.Module, batch: Batch, task: Any,
               optimizer: torch.optim.Optimizer, generator: torch.Generator,
               autocast: Any = None, dist: Dist | None = None, n_global: int | None = None) -> LossOut:
    """One optimisation step of the composite loss (what ``benchmarks/overhead.py`` times):
    prepare + loss (under ``autocast`` when given), backward, step, restore, after-step hooks.

    Data-parallel (``dist`` active; ``batch`` is this rank's shard of a global batch of ``n_global``):
    the gradients (and a weight perturbation's) are averaged over ranks before the step, and the
    BatchNorm buffers are broadcast from rank 0 after it (see :mod:`natbench.distributed`)."""
    parallel = dist is not None and dist.active
    if parallel and composite.perturbation is not None:
        composite.perturbation.grad_sync = lambda g: dist.average(g, len(batch), n_global)
    with autocast if autocast is not None else contextlib.nullcontext():
        out = composite.step_loss(model, batch, task, generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if parallel:
        dist.average_gradients(model, len(batch), n_global)
    optimizer.step()
    composite.restore()
    composite.after_step(model)
    if parallel and not _has_sync_bn(model):
        dist.broadcast_buffers(model)
    return out


def _has_sync_bn(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def cuda_speedups(profile, device: torch.device) -> tuple[Any, bool]:
    """``(autocast context or None, channels_last)`` for training on ``device``. bf16 autocast (which
    covers the inner attack too) only on CUDA and only when the profile opts in (``amp``; default off:
    the references all train in fp32); channels_last on CUDA when the profile asks (its default).
    Both off on CPU, where they are slower or unsupported."""
    if device.type != "cuda":
        return None, False
    return (torch.autocast("cuda", dtype=torch.bfloat16) if profile.amp else None), bool(profile.channels_last)


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
        if self.sync_bn and self.device.type != "cuda":
            from .errors import ConfigError

            raise ConfigError("--sync-bn: torch's SyncBatchNorm runs on CUDA only; drop --sync-bn on CPU")
        if not self.dist.is_main:  # one progress display: rank 0's
            self.reporter = Reporter()
        if self.eval_bf16 and self.device.type != "cuda":
            from .errors import ConfigError

            raise ConfigError(f"--eval-bf16: bf16 autocast evaluation needs a CUDA device (device is {self.device}); "
                              f"drop --eval-bf16 or use --device cuda")
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
        return task_kind_cls(self.registry, r.spec)(r.spec, self.data_root)

    # --------------------------------------------------------------------------------- run
    def run(self, r: Resolved, *, force: bool = False, dependent: str | None = None) -> str:
        """Train and evaluate ``r`` (dependencies first) unless a complete identical run exists; one
        process at a time per run directory (:mod:`natbench.lock`: a second start waits, then reuses).

        A dependency run (``dependent``: the run waiting for its checkpoint) is trained and handed
        on at once; its own evaluation runs after the outermost run's (:meth:`_evaluate_deferred`)."""
        with locked_run_dir(safe_run_dir(self.root, r.run_id), self.dist.is_main, self.reporter.message):
            return self._run(r, force=force, dependent=dependent)

    def _run(self, r: Resolved, *, force: bool = False, dependent: str | None = None) -> str:
        existing, now = None, numerics(self.device)
        if self.dist.is_main:
            fresh = self._store is None and not store_exists(self.root, self.db)
            existing = None if fresh else provenance.find_existing(self.store, r.config_hash, r.task, now)  # no store file for a failed first run
        existing = self.dist.broadcast(existing)  # every rank takes rank 0's decision
        if existing and not force:
            other = "" if existing.same else (f", computed with {provenance.describe(existing.numerics)}; now "
                                              f"{provenance.describe(now)}; --force adds a result with these")
            self.reporter.message(f"{existing.run_id}: already complete (same config{other}); reusing it. Use --force to run again.")
            if dependent is not None:
                self._deferred.append((r, existing.run_id, dependent))
            else:
                self._complete_suite(r, existing.run_id)
                self._evaluate_deferred()
            return existing.run_id
        if existing and (not existing.same or existing.run_id != r.run_id):  # other numerics: a new result, kept beside
            r = provenance.as_new_result(r, now)
            if not existing.same:
                self.reporter.message(f"{r.run_id}: {existing.run_id} was computed with {provenance.describe(existing.numerics)}; "
                                      f"recording this run ({provenance.describe(now)}) as a separate result")
        task = self.task(r)
        task.check_data()
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        composite = Composite.build(r.plan, r.params)
        _, channels_last = cuda_speedups(r.profile, self.device)
        for component, dep in composite.dependencies():
            model = self.dependency_model(r, dep)
            component.bind(dep.role, model.to(memory_format=torch.channels_last) if channels_last else model)
        run_dir = safe_run_dir(self.root, r.run_id)
        if self.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if force:  # from scratch: drop what an earlier attempt left
                for name in ("state.pt", "best.pt", "last.pt", "record.json", PARTIAL):
                    (run_dir / name).unlink(missing_ok=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(r.config, sort_keys=False))
        self.dist.barrier()
        self.reporter.message(f"run {r.run_id} ({provenance.describe(now)}) in {run_dir}")
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        history = self.train(r, task, composite, run_dir)
        fast = dict(getattr(self, "_fast", {}))  # before an evaluation dependency trains and replaces it
        resumed_s = self._resumed_train_s  # training time of earlier (killed) attempts: the cost is their sum
        t1 = time.perf_counter()
        if dependent is not None:  # hand the checkpoint on now; evaluated after the dependent
            results, flags, checks = [], [], []
        else:
            results, flags, checks = self.evaluate(r, task, run_dir)
        t2 = time.perf_counter()
        record = RunRecord(
            run_id=r.run_id, task=r.task, defense=r.defense, profile=r.profile_name, seed=r.seed,
            config_hash=r.config_hash, git_rev=git_revision(), versions=versions(),
            device=provenance.device_column(now, fast),
            started=started, finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            wall_train_s=round(t1 - t0 + resumed_s, 3), wall_eval_s=round(t2 - t1, 3), config=r.config,
            suite=[] if dependent is not None else ["clean", *(a.id for a in r.suite.attacks)], variant=r.variant,
        )
        if self.dist.is_main:
            shas = {c: sha256_file(run_dir / f"{c}.pt") for c in CHECKPOINTS}  # what the results were computed from
            self.store.record_run(record, results, flags, checks, checkpoints=shas,
                                  facts=run_facts(task, r.suite, results, self.registry))  # what the leaderboard reads
            (run_dir / PARTIAL).unlink(missing_ok=True)
            atomic_write_text(run_dir / "record.json", json.dumps({
                **to_dict(record), "history": history, "processes": self.dist.world, "checkpoints_sha256": shas,
                "fast_path": fast, "numerics": now,
                "results": [to_dict(x) for x in results], "checks": [to_dict(x) for x in checks],
            }, indent=1, default=str))
        self.dist.barrier()
        if dependent is not None:
            self._deferred.append((r, r.run_id, dependent))
            self.reporter.message(f"{r.run_id}: trained in {t1 - t0:.1f}s; checkpoint handed on to {dependent}, "
                                  f"its own evaluation runs after {dependent}'s")
            return r.run_id
        self.reporter.message(f"{r.run_id}: complete (train {t1 - t0:.1f}s, eval {t2 - t1:.1f}s)")
        self._evaluate_deferred()
        return r.run_id

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
            self._complete_suite(dep_r, run_id)

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
        dep_r = with_defense(self.registry, r, dep.defense, dep.sets)
        dep_task = self.task(dep_r)
        if dep.checkpoint == "init":  # an untrained model, seeded apart from the target's own init
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

    def _complete_suite(self, r: Resolved, run_id: str) -> None:
        """Evaluate the attacks of ``r``'s suite that the finished run ``run_id`` has not seen yet."""
        done = self.dist.broadcast(set(self.store.get_run(run_id).suite) if self.dist.is_main else None)
        missing = [a for a in r.suite.attacks if a.id not in done]
        if missing:
            self.reporter.message(f"{run_id}: evaluating {', '.join(a.id for a in missing)} (not in its record yet)")
            suite = dataclasses.replace(r.suite, attacks=tuple(missing))
            ok = verify(self.store, run_id, self.root / run_id, CHECKPOINTS) if self.dist.is_main else None
            results, flags, checks = self.evaluate(r, self.task(r), self.root / run_id, CHECKPOINTS, suite)
            if self.dist.is_main:  # a run never evaluated (a deferred dependency) gets its checks too
                self.store.add_results(run_id, results, flags, checks if not done else [],
                                       suite=["clean", *(a.id for a in missing)], checkpoints=ok.sha256,
                                       facts=run_facts(task_kind_cls(self.registry, r.spec), suite, results, self.registry))
                (self.root / run_id / PARTIAL).unlink(missing_ok=True)
            self.dist.barrier()

    def load_model(self, task: Any, run_id: str, checkpoint: str, verified: bool = False) -> torch.nn.Module:
        model = task.build_model().to(self.device)
        if not verified and store_exists(self.root, self.db) and self.store.get_run(run_id) is not None:  # a finished run's file
            verify(self.store, run_id, self.root / run_id, (checkpoint,))
        load_weights(model, self.root / run_id / f"{checkpoint}.pt", f"run {run_id}: checkpoint", _RETRAIN, self.device)
        return model

    # --------------------------------------------------------------------------------- train
    def train(self, r: Resolved, task: Any, composite: Composite, run_dir: Path) -> list[dict]:
        prof = r.profile
        torch.manual_seed(derive_seed(r.seed, "init"))
        model = task.build_model().to(self.device)
        if self.sync_bn and self.dist.active:
            from .distributed import sync_batchnorm

            model = sync_batchnorm(model)
        autocast, channels_last = cuda_speedups(prof, self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(prof, model)
        main, dist = self.dist.is_main, self.dist
        fast = self.fast_path(prof, task)
        self._fast = fast
        # torch.compile'd module for the training steps only; checkpoints and evaluation use `model`
        step_model = torch.compile(model) if fast.get("compile") else model
        state_path = run_dir / "state.pt"
        start, history, best, stopped = 0, [], float("-inf"), False
        attempt_t0, self._resumed_train_s = time.perf_counter(), 0.0  # earlier attempts' training time (resumed)
        if state_path.exists():
            state = load_state(state_path, r.run_id, self.device)
            if state.get("config_hash") == r.config_hash and state["epoch"] + 1 <= prof.epochs:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                composite.load_state_dict(state.get("components", {}))
                start, best = state["epoch"] + 1, state["best"]
                self._resumed_train_s = float(state.get("train_s", 0.0))
                history = json.loads(state["history"])
                stopped = bool(state.get("stopped", False))
                self.reporter.message(f"{r.run_id}: resuming after epoch {start} of {prof.epochs}"
                                      + (" (training had stopped early)" if stopped else ""))
        replays = composite.replays
        bar = self.reporter.start(f"train {r.defense}", prof.epochs)
        self.reporter.advance(bar, start)
        for epoch in range(start, prof.epochs if not stopped else start):
            te = time.perf_counter()
            gen = torch.Generator().manual_seed(derive_seed(r.seed, "epoch", epoch))
            # data-parallel: the loader's generator (order, augmentation) is the same on every rank;
            # the attacks draw from a generator of the rank's own (its shard's random starts)
            agen = torch.Generator().manual_seed(derive_seed(r.seed, "epoch", epoch, "rank", dist.rank)) if dist.active else gen
            if fast.get("gpu_resident"):  # attack noise drawn on the GPU: no host-to-device copy per attack
                agen = torch.Generator(device=self.device).manual_seed(derive_seed(r.seed, "epoch", epoch, "rank", dist.rank, "cuda"))
            torch.manual_seed(derive_seed(r.seed, "global", epoch))
            composite.set_epoch(epoch, prof.epochs)
            train_loader, val_loader, _ = task.loaders(prof.batch_size, gen, prof.eval_batch_size)
            iters = max(len(train_loader), 1) * replays
            sums: dict[str, float] = {}
            n, first, seen = 0, None, 0
            for i, batch in enumerate(train_loader):
                n_global = len(batch)
                if dist.active:  # this rank's contiguous shard of the global batch
                    sl = dist.shard(n_global)
                    batch = batch.rows(sl.start, sl.stop)
                seen += len(batch)
                batch = batch.to(self.device)
                if channels_last and batch.x.dim() == 4:
                    batch.x = batch.x.contiguous(memory_format=torch.channels_last)
                if first is None:
                    first = batch
                for k in range(replays):
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(prof, epoch + (i * replays + k) / iters)
                        if prof.cycle_momentum:
                            group["momentum"] = momentum_at(prof, epoch + (i * replays + k) / iters)
                    out = train_step(composite, step_model, batch, task, optimizer, agen, autocast, dist, n_global)
                    for key, v in {"loss": out.loss.item(), **out.parts}.items():
                        sums[key] = sums.get(key, 0.0) + v
                    n += 1
            means = dist.gather_sum({k: v / max(n, 1) for k, v in sums.items()}, seen)  # over ranks, by samples
            row = {"epoch": epoch, "lr": lr_at(prof, epoch), **means}
            if first is not None:
                end_vals = dist.broadcast(composite.epoch_end(model, task, first, agen))  # rank 0's shard decides
                if dist.active and not _has_sync_bn(model):
                    dist.broadcast_buffers(model)  # the hook may have run train-mode forwards (Fast-AT's guard)
                row.update({k: v for k, v in end_vals.items()})
                if end_vals.get("stop", 0.0) > 0 and state_path.exists():  # keep the previous epoch's weights (Fast-AT's guard)
                    row["seconds"] = round(time.perf_counter() - te, 3)
                    history.append(row)
                    self.reporter.message(f"{r.run_id}: stopped at epoch {epoch} by the early-stop guard; "
                                          f"keeping epoch {epoch - 1}'s weights as last")
                    if main:
                        state = torch.load(state_path, map_location=self.device, weights_only=True)
                        state.update(stopped=True, history=json.dumps(history))
                        atomic_save(state, state_path)
                    break
            scored = composite.eval_model(model)
            val = self.validate(r, task, scored, val_loader, epoch)
            metric = val["val_clean"] if composite.select_on == "clean" else val["val_robust"]
            row.update(**val, seconds=round(time.perf_counter() - te, 3))
            history.append(row)
            if metric != metric:  # NaN (an empty validation set) never wins
                metric = float("-inf")
            weights = _plain_state(scored)
            if metric > best or not (run_dir / "best.pt").exists():
                best = metric
                if main:
                    atomic_save(weights, run_dir / "best.pt")
            if main:
                atomic_save(weights, run_dir / "last.pt")
                atomic_save({"config_hash": r.config_hash, "epoch": epoch, "best": best, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "components": composite.state_dict(),
                             "history": json.dumps(history),
                             "train_s": self._resumed_train_s + time.perf_counter() - attempt_t0}, state_path)
            dist.barrier()  # every rank sees best.pt before the next epoch's "exists" test
            self.reporter.advance(bar, 1, **{k: f"{v:.3f}" for k, v in val.items()})
        self.reporter.stop(bar)
        if history and main:
            from .analysis.plots import training_curves

            training_curves(history, run_dir / "training.png", f"{r.task} · {r.defense} · seed {r.seed}",
                            getattr(task, "headline_metric", "accuracy"))
        return history

    def fast_path(self, profile, task: Any) -> dict[str, Any]:
        """The CUDA fast path this run uses (recorded in its provenance): an in-memory dataset resident
        on the GPU with augmentation and attack noise drawn there (``gpu_resident``), bf16 autocast
        (``amp``), ``channels_last``, optionally ``torch.compile``. Empty on CPU."""
        if self.device.type != "cuda":
            return {}
        out: dict[str, Any] = {"amp": "bf16" if profile.amp else "off", "channels_last": bool(profile.channels_last),
                               "tf32": "+".join(k for k, on in (("matmul", torch.backends.cuda.matmul.allow_tf32),
                                                                ("cudnn", torch.backends.cudnn.allow_tf32)) if on) or "off"}
        resident = getattr(task, "resident", None)
        out["gpu_resident"] = bool(profile.gpu_resident and callable(resident) and resident(self.device))
        out["compile"] = bool(profile.compile)
        return out

    def validate(self, r: Resolved, task: Any, model: torch.nn.Module, loader: Any, epoch: int) -> dict[str, float]:
        from .attacks.pgd import PGD

        attack = PGD(PGD.Params(steps=r.spec.selection.steps, step_size=r.spec.selection.step_size))
        gen = torch.Generator().manual_seed(derive_seed(r.seed, "val", epoch))
        metric = getattr(task, "headline_metric", "accuracy")  # re-id: mAP (its PGD runs on the embedding)
        clean = task.evaluate(model, loader, None, device=self.device).metrics[metric]
        robust = task.evaluate(model, loader, attack, generator=gen, device=self.device).metrics[metric]
        return {"val_clean": clean, "val_robust": robust}

    # --------------------------------------------------------------------------------- evaluate
    def evaluate(self, r: Resolved, task: Any, run_dir: Path, checkpoints: tuple[str, ...] = CHECKPOINTS,
                 suite=None, external: Any = None) -> tuple[list[ResultRow], list[FlagRow], list[CheckRow]]:
        """Evaluate ``checkpoints`` of the run in ``run_dir`` under clean inputs and every attack of
        ``suite`` (default: the run's), then the sanity checks; a failed check schedules the stronger
        evaluation it calls for (:data:`natbench.checks.ESCALATIONS`), recorded under its own id.

        Attack dependencies (a transfer surrogate) are trained or loaded first; an adaptive attack
        (objective ``"defense"``) gets the run's composition with its own dependencies bound.
        ``external`` (:class:`natbench.external.External`): evaluate that outside model instead of the
        run's checkpoints (``checkpoints`` is then its one label, ``natbench.external.CHECKPOINT``).
        """
        suite = suite or r.suite
        _, _, test_loader = task.loaders(r.profile.eval_batch_size, torch.Generator().manual_seed(0), r.profile.eval_batch_size)
        jobs = [self._job(r, run_dir, a.id, a.attack, a.params, a.objective) for a in suite.attacks]
        composite = self._adaptive_composite(r, jobs)
        results, flags, checks = [], [], []
        model = (task.build_model() if external is None else external.model).to(self.device)
        partial_path = run_dir / PARTIAL
        dist = self.dist
        dist.barrier()  # rank 0 wrote the checkpoints (and any partial results)
        partial = dist.broadcast((load_torch(partial_path, f"run {run_dir.name}: unfinished evaluations",
                                             "delete the file (those evaluations are computed again)")
                                  if partial_path.exists() else {}) if dist.is_main else None)
        shard = dist.active and bool(getattr(task, "EVAL_SHARDABLE", False))
        evaluated: dict[str, str] = {}  # digest of the weights -> the checkpoint evaluated with them
        for ckpt in checkpoints:
            if external is None:
                load_weights(model, run_dir / f"{ckpt}.pt", f"run {run_dir.name}: checkpoint", _RETRAIN, self.device)
                same = evaluated.setdefault(provenance.weights_digest(model.state_dict()), ckpt)
                if same != ckpt:  # best and last are the same epoch: evaluate once, record for both
                    self.reporter.message(f"{run_dir.name}: {ckpt} has the weights of {same} (same epoch); "
                                          f"recording {same}'s results for {ckpt} too")
                    results += [dataclasses.replace(x, checkpoint=ckpt) for x in results if x.checkpoint == same]
                    flags += [dataclasses.replace(x, checkpoint=ckpt) for x in flags if x.checkpoint == same]
                    checks += [dataclasses.replace(x, checkpoint=ckpt) for x in checks if x.checkpoint == same]
                    continue
            steps = {j.id: j.attack.params.steps for j in jobs if j.name == "pgd"}
            black_box = {j.id for j in jobs if j.black_box}
            acc: dict[str, torch.Tensor] = {}
            ckpt_sha = external.sha256 if external is not None else sha256_file(run_dir / f"{ckpt}.pt")

            def run_job(job: "_Job") -> None:
                # Finished (checkpoint, attack) evaluations are kept in eval-partial.pt so a killed
                # evaluation resumes; the key covers everything that determines the numbers, so a
                # result computed with another configuration is never reused (nor mixed in).
                key = derive_seed(ckpt, ckpt_sha, job.id, type(job.attack).__name__,
                                  to_dict(job.attack.params) if job.attack is not None else None, job.objective,
                                  task.threat.eps, r.seed, r.profile.eval_batch_size, self.eval_bf16)
                self.reporter.advance(bar, 0, attack=job.id)  # the progress line names the attack being run
                done = partial.get(f"{ckpt}/{job.id}")
                if done is not None and done["key"] == key:
                    out_metrics, correct = done["metrics"], done["correct"]
                    self.reporter.advance(bar, len(test_loader))
                else:
                    if done is not None:
                        self.reporter.message(f"{run_dir.name} [{ckpt}] {job.id}: a stored partial result was computed "
                                              f"with another configuration; evaluating again")
                    gen = torch.Generator().manual_seed(derive_seed(r.seed, "eval", job.id))
                    objective = job.objective
                    if objective == DEFENSE_OBJECTIVE:
                        objective = lambda m, b: composite.adaptive_objective(m, b, task)  # noqa: E731
                    loader = dist.shard_batches(test_loader) if shard else test_loader
                    with self._eval_autocast():
                        out = task.evaluate(model, loader, job.attack, objective=objective, generator=gen,
                                            device=self.device, on_batch=lambda: self.reporter.advance(bar, dist.world if shard else 1),
                                            with_sparsity=job.attack is None)
                    out_metrics, correct = dict(out.metrics), out.correct
                    if shard:  # every rank's per-sample flags, back in loader order; means weighted by samples
                        sizes = loader.sizes
                        correct = dist.gather_flags(list(zip(loader.indices, torch.split(correct, sizes))))
                        out_metrics = dist.gather_sum(out_metrics, sum(sizes))
                        out_metrics["accuracy"] = correct.float().mean().item() if len(correct) else float("nan")
                    if self.eval_bf16:  # recorded with the result, shown on the leaderboard
                        out_metrics["bf16_autocast"] = 1.0
                    partial[f"{ckpt}/{job.id}"] = {"key": key, "metrics": out_metrics, "correct": correct}
                    if dist.is_main:
                        atomic_save(partial, partial_path)
                acc[job.id] = correct
                results.extend(ResultRow(ckpt, job.id, m, v) for m, v in out_metrics.items())
                flags.append(FlagRow(ckpt, job.id, correct.numpy()))

            all_jobs = [_Job("clean", "clean", None, "ce"), *jobs]
            bar = self.reporter.start(f"eval {r.defense} [{ckpt}]", len(all_jobs) * len(test_loader))
            for job in all_jobs:
                run_job(job)
            self.reporter.stop(bar)
            found = suite_checks(acc, steps, black_box)
            found += attack_checks(j.attack for j in jobs)  # AutoAttack's Square check (the original's warning)
            if "ce" in getattr(task, "OBJECTIVES", ()):
                found += model_checks(task, model, test_loader, device=self.device,
                                      generator=torch.Generator().manual_seed(derive_seed(r.seed, "check", ckpt)))
            failed = {c.name for c in found if not c.passed}
            extra = [self._job(r, run_dir, *e) for e in escalations(failed, {j.id: j.name for j in jobs}, steps,
                                                                    getattr(task, "OBJECTIVES", ()))]
            if extra:
                # a gradient-masking symptom: run the stronger attack it calls for (docs/flags.md)
                self.reporter.message(f"{r.run_id} [{ckpt}]: {', '.join(sorted(failed))} failed; running "
                                      f"{', '.join(j.id for j in extra)} as docs/flags.md says")
                bar = self.reporter.start(f"eval {r.defense} [{ckpt}] escalated", len(extra) * len(test_loader))
                for job in extra:
                    run_job(job)
                self.reporter.stop(bar)
                black_box |= {j.id for j in extra if j.black_box}
                found = [c for c in found if c.name not in SUITE_CHECKS] + suite_checks(acc, steps, black_box)
            checks += [CheckRow(ckpt, c.name, c.passed, c.detail) for c in found]
        return results, flags, checks

    def _job(self, r: Resolved, run_dir: Path, aid: str, name: str, params: dict, objective: str | None = None) -> "_Job":
        """One attack of a suite (or an escalation), instantiated, its dependencies bound."""
        cls = self.registry.load("attacks", name)
        attack = cls(from_dict(cls.Params, params, f"suite.{aid}.params"))
        for dep in getattr(attack, "dependencies", ()):
            model = self.dependency_model(r, dep, evaluated=run_dir.name)
            attack.bind(dep.role, model)
        return _Job(aid, name, attack, objective or cls.objective_kind, bool(getattr(cls, "black_box", False)))

    def _adaptive_composite(self, r: Resolved, jobs: list["_Job"]) -> Composite | None:
        """The run's composition with its dependencies bound, when an attack maximises its training
        objective (objective kind ``"defense"``); None otherwise."""
        if not any(j.objective == DEFENSE_OBJECTIVE for j in jobs):
            return None
        composite = Composite.build(r.plan, r.params)
        for component, dep in composite.dependencies():
            component.bind(dep.role, self.dependency_model(r, dep))
        return composite

    def _eval_autocast(self) -> Any:
        """bf16 autocast for an evaluation when asked for (``eval_bf16``, CUDA only); fp32 otherwise."""
        if not self.eval_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class _Job:
    """One evaluation: result id, registry name, attack instance (None: clean), objective kind."""

    id: str
    name: str
    attack: Any
    objective: str
    black_box: bool = False


def _plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous (not channels_last) copy of the state dict: checkpoints load anywhere."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
