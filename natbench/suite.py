"""Evaluating a run: clean inputs and every attack of a suite, the sanity checks, their escalations.

:class:`SuiteEvaluator` evaluates the checkpoints of one run (or an outside model) and returns the
rows; it owns the run's resumable partial results (:class:`PartialResults`, ``eval-partial.pt``), so
a killed evaluation resumes where it stopped. :func:`add_suite` is the one way to add a suite to a
finished run (``natbench run`` reusing a run, a deferred dependency, ``natbench eval``), and
:func:`record_suite` the one way to add the rows to its record. Both take the threat model to evaluate
under (``natbench eval --threat-model``; default the run's own): the task's ``threat`` is set to it,
so the attacks, their eps ball and the checks use it, and the rows are stored under its key
(:mod:`natbench.threats`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import provenance
from .attacks.corruption import is_corruption
from .checks import SUITE_CHECKS, attack_checks, escalations, model_checks, suite_checks
from .compose import Composite
from .config import from_dict, to_dict
from .distributed import Dist
from .integrity import sha256_file, verify
from .resolve import DEFENSE_OBJECTIVE, Resolved
from .run_model import RETRAIN
from .safety import atomic_save, load_torch, load_weights
from .store import CheckRow, FlagRow, ResultRow
from .training import derive_seed

CHECKPOINTS = ("best", "last")
#: the id under which the gradient-free Square attack scheduled by a failed masking check is recorded
ESCALATED = "escalated-square"
#: finished evaluations of a run not yet recorded in the store (deleted once they are)
PARTIAL = "eval-partial.pt"

Rows = tuple[list[ResultRow], list[FlagRow], list[CheckRow]]


@dataclass(frozen=True)
class Job:
    """One evaluation: result id, registry name, attack instance (None: clean), objective kind."""

    id: str
    name: str
    attack: Any
    objective: str
    black_box: bool = False
    seed_id: str = ""  # the id whose seed the random starts are drawn from ('': its own; suite key seed_as)


class PartialResults:
    """A run's finished (checkpoint, attack) evaluations not yet in the store (``eval-partial.pt``).

    Rank 0 reads the file (every rank gets its content) and writes it after each evaluation; an entry
    is used only when its key -- everything that determines the numbers -- is the current one, so a
    result computed with another configuration is never reused (nor mixed in)."""

    def __init__(self, run_dir: Path, dist: Dist):
        self.path, self.dist, self.run = run_dir / PARTIAL, dist, run_dir.name
        dist.barrier()  # rank 0 wrote the checkpoints (and any partial results)
        self.done = dist.broadcast((load_torch(self.path, f"run {self.run}: unfinished evaluations",
                                               "delete the file (those evaluations are computed again)")
                                    if self.path.exists() else {}) if dist.is_main else None)

    def get(self, ckpt: str, job_id: str) -> dict | None:
        return self.done.get(f"{ckpt}/{job_id}")

    def put(self, ckpt: str, job_id: str, key: int, metrics: dict[str, float], correct: torch.Tensor) -> None:
        self.done[f"{ckpt}/{job_id}"] = {"key": key, "metrics": metrics, "correct": correct}
        if self.dist.is_main:
            atomic_save(self.done, self.path)


class SuiteEvaluator:
    """Evaluates checkpoints of the run ``r`` in ``run_dir`` under clean inputs and every attack of a
    suite, then the sanity checks; a failed check schedules the stronger evaluation it calls for
    (:data:`natbench.checks.ESCALATIONS`), recorded under its own id.

    ``dependency_model(r, dep, evaluated=None)`` gives the model behind a dependency (the runner's:
    a transfer surrogate is trained or loaded first; an adaptive attack, objective ``"defense"``,
    gets the run's composition with its own dependencies bound)."""

    def __init__(self, r: Resolved, task: Any, run_dir: Path, *, registry: Any, device: torch.device, dist: Dist,
                 reporter: Any, dependency_model: Callable[..., torch.nn.Module], eval_bf16: bool = False):
        self.r, self.task, self.run_dir = r, task, run_dir
        self.registry, self.device, self.dist, self.reporter = registry, device, dist, reporter
        self.dependency_model, self.eval_bf16 = dependency_model, eval_bf16

    def evaluate(self, checkpoints: tuple[str, ...] = CHECKPOINTS, suite: Any = None, external: Any = None) -> Rows:
        """The rows of ``checkpoints`` under ``suite`` (default: the run's). ``external``
        (:class:`natbench.external.External`): evaluate that outside model instead of the run's
        checkpoints (``checkpoints`` is then its one label, ``natbench.external.CHECKPOINT``)."""
        r, task = self.r, self.task
        suite = suite or r.suite
        bs = r.profile.eval_batch_size
        _, _, self.test_loader = task.loaders(bs, torch.Generator().manual_seed(0), bs)
        self.jobs = [self.job(a.id, a.attack, a.params, a.objective, a.seed_as) for a in suite.attacks]
        self.composite = self._adaptive_composite()
        self.model = (task.build_model() if external is None else external.model).to(self.device)
        self.partial = PartialResults(self.run_dir, self.dist)
        self.shard = self.dist.active and bool(getattr(task, "EVAL_SHARDABLE", False))
        rows: Rows = ([], [], [])
        evaluated: dict[str, str] = {}  # digest of the weights -> the checkpoint evaluated with them
        for ckpt in checkpoints:
            if external is None:
                load_weights(self.model, self.run_dir / f"{ckpt}.pt", f"run {self.run_dir.name}: checkpoint", RETRAIN,
                             self.device)
                same = evaluated.setdefault(provenance.weights_digest(self.model.state_dict()), ckpt)
                if same != ckpt:  # best and last are the same epoch: evaluate once, record for both
                    self.reporter.message(f"{self.run_dir.name}: {ckpt} has the weights of {same} (same epoch); "
                                          f"recording {same}'s results for {ckpt} too")
                    for part in rows:
                        part += [dataclasses.replace(x, checkpoint=ckpt) for x in part if x.checkpoint == same]
                    continue
            sha = external.sha256 if external is not None else sha256_file(self.run_dir / f"{ckpt}.pt")
            self._checkpoint(ckpt, sha, rows)
        return rows

    def _checkpoint(self, ckpt: str, sha: str, rows: Rows) -> None:
        """Evaluate one checkpoint: clean and the suite, the checks, and the escalations they call for."""
        r, task, jobs = self.r, self.task, self.jobs
        steps = {j.id: j.attack.params.steps for j in jobs if j.name == "pgd"}
        black_box = {j.id for j in jobs if j.black_box}
        acc: dict[str, torch.Tensor] = {}
        self._run_jobs(f"eval {r.defense} [{ckpt}]", [Job("clean", "clean", None, "ce"), *jobs], ckpt, sha, rows, acc)
        found = suite_checks(acc, steps, black_box)
        found += attack_checks(j.attack for j in jobs)  # AutoAttack's Square check (the original's warning)
        corruptions_only = bool(jobs) and all(is_corruption(j.attack) for j in jobs)  # no eps-ball: no model checks
        if "ce" in getattr(task, "OBJECTIVES", ()) and not corruptions_only:
            found += model_checks(task, self.model, self.test_loader, device=self.device, registry=self.registry,
                                  generator=torch.Generator().manual_seed(derive_seed(r.seed, "check", ckpt)))
        failed = {c.name for c in found if not c.passed}
        extra = [self.job(*e) for e in escalations(failed, {j.id: j.name for j in jobs}, steps,
                                                   getattr(task, "OBJECTIVES", ()), task.threat.norm, self.registry)]
        if extra:
            # a gradient-masking symptom: run the stronger attack it calls for (docs/flags.md)
            self.reporter.message(f"{r.run_id} [{ckpt}]: {', '.join(sorted(failed))} failed; running "
                                  f"{', '.join(j.id for j in extra)} as docs/flags.md says")
            self._run_jobs(f"eval {r.defense} [{ckpt}] escalated", extra, ckpt, sha, rows, acc)
            black_box |= {j.id for j in extra if j.black_box}
            found = [c for c in found if c.name not in SUITE_CHECKS] + suite_checks(acc, steps, black_box)
        rows[2].extend(CheckRow(ckpt, c.name, c.passed, c.detail) for c in found)

    def _run_jobs(self, description: str, jobs: list[Job], ckpt: str, sha: str, rows: Rows,
                  acc: dict[str, torch.Tensor]) -> None:
        bar = self.reporter.start(description, len(jobs) * len(self.test_loader))
        for job in jobs:
            self._run_job(job, ckpt, sha, bar, rows, acc)
        self.reporter.stop(bar)

    def _run_job(self, job: Job, ckpt: str, sha: str, bar: Any, rows: Rows, acc: dict[str, torch.Tensor]) -> None:
        """One (checkpoint, attack) evaluation, taken from the partial results when they hold it."""
        r, task = self.r, self.task
        norm = getattr(task.threat, "norm", "linf")  # in the key where not linf: linf keys stay as they were
        key = derive_seed(ckpt, sha, job.id, type(job.attack).__name__,
                          to_dict(job.attack.params) if job.attack is not None else None, job.objective,
                          task.threat.eps, r.seed, r.profile.eval_batch_size, self.eval_bf16,
                          *((norm,) if norm != "linf" else ()), *((job.seed_id,) if job.seed_id else ()))
        self.reporter.advance(bar, 0, attack=job.id)  # the progress line names the attack being run
        done = self.partial.get(ckpt, job.id)
        if done is not None and done["key"] == key:
            metrics, correct = done["metrics"], done["correct"]
            self.reporter.advance(bar, len(self.test_loader))
        else:
            if done is not None:
                self.reporter.message(f"{self.run_dir.name} [{ckpt}] {job.id}: a stored partial result was computed "
                                      f"with another configuration; evaluating again")
            metrics, correct = self._attack(job, bar)
            self.partial.put(ckpt, job.id, key, metrics, correct)
        if not is_corruption(job.attack):  # the gradient-masking checks compare adversarial evaluations only
            acc[job.id] = correct
        rows[0].extend(ResultRow(ckpt, job.id, m, v) for m, v in metrics.items())
        rows[1].append(FlagRow(ckpt, job.id, correct.numpy()))

    def _attack(self, job: Job, bar: Any) -> tuple[dict[str, float], torch.Tensor]:
        """The metrics and per-sample correctness of the model under ``job`` (sharded over ranks when
        the task allows it)."""
        r, task, dist, shard = self.r, self.task, self.dist, self.shard
        gen = torch.Generator().manual_seed(derive_seed(r.seed, "eval", job.seed_id or job.id))
        objective = job.objective
        if objective == DEFENSE_OBJECTIVE:
            objective = lambda m, b: self.composite.adaptive_objective(m, b, task)  # noqa: E731
        loader = dist.shard_batches(self.test_loader) if shard else self.test_loader
        with self._autocast():
            out = task.evaluate(self.model, loader, job.attack, objective=objective, generator=gen,
                                device=self.device, on_batch=lambda: self.reporter.advance(bar, dist.world if shard else 1),
                                with_sparsity=job.attack is None)
        metrics, correct = {**out.metrics, **getattr(job.attack, "result_metrics", {})}, out.correct
        if shard:  # every rank's per-sample flags, back in loader order; means weighted by samples
            sizes = loader.sizes
            correct = dist.gather_flags(list(zip(loader.indices, torch.split(correct, sizes))))
            metrics = dist.gather_sum(metrics, sum(sizes))
            metrics["accuracy"] = correct.float().mean().item() if len(correct) else float("nan")
        if self.eval_bf16:  # recorded with the result, shown on the leaderboard
            metrics["bf16_autocast"] = 1.0
        return metrics, correct

    def job(self, aid: str, name: str, params: dict, objective: str | None = None, seed_as: str | None = None) -> Job:
        """One attack of a suite (or an escalation), instantiated, its dependencies bound."""
        from .attacks._base import with_norm

        cls = self.registry.load("attacks", name)
        attack = with_norm(cls(from_dict(cls.Params, params, f"suite.{aid}.params")), self.task.threat.norm, f"suite.{aid}")
        for dep in getattr(attack, "dependencies", ()):
            attack.bind(dep.role, self.dependency_model(self.r, dep, evaluated=self.run_dir.name))
        return Job(aid, name, attack, objective or cls.objective_kind, bool(getattr(cls, "black_box", False)), seed_as or "")

    def _adaptive_composite(self) -> Composite | None:
        """The run's composition with its dependencies bound, when an attack maximises its training
        objective (objective kind ``"defense"``); None otherwise."""
        if not any(j.objective == DEFENSE_OBJECTIVE for j in self.jobs):
            return None
        composite = Composite.build(self.r.plan, self.r.params)
        for component, dep in composite.dependencies():
            component.bind(dep.role, self.dependency_model(self.r, dep))
        return composite

    def _autocast(self) -> Any:
        """bf16 autocast for an evaluation when asked for (``eval_bf16``, CUDA only); fp32 otherwise."""
        if not self.eval_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
# ------------------------------------------------------------------------------- adding a suite
def add_suite(runner: Any, r: Resolved, run_id: str, suite: Any = None, checkpoints: tuple[str, ...] = CHECKPOINTS,
              *, missing_only: bool = False, force: bool = False, note_numerics: bool = False,
              threat: tuple[str, float] | None = None) -> bool:
    """Evaluate ``suite`` (default: ``r``'s) on the checkpoints of the complete run ``run_id`` and add
    the rows to its record (:func:`record_suite`); False when there was nothing to evaluate.

    ``missing_only``: only the attacks the run's record does not list yet (a reused run, a deferred
    dependency). Every checkpoint file is verified against its recorded hash before any compute
    (``force``: a changed one is evaluated as a new model, its earlier rows replaced). ``threat``:
    ``(norm, eps)`` to evaluate under instead of the run's own threat model (stored apart,
    :func:`natbench.threats.stored_key`)."""
    from . import threats

    dist, store, run_dir = runner.dist, runner.store, runner.root / run_id
    suite = suite or r.suite
    own = r.spec.threat_model
    key = threats.stored_key(threat, (getattr(own, "norm", "linf"), float(own.eps)))
    if missing_only:
        done = dist.broadcast(set(store.get_run(run_id).suite if not key else store.attacks(run_id, key))
                              if dist.is_main else None)
        missing = [a for a in suite.attacks if a.id not in done]
        if not missing:
            return False
        runner.reporter.message(f"{run_id}: evaluating {', '.join(a.id for a in missing)} (not in its record yet)")
        suite = dataclasses.replace(suite, attacks=tuple(missing))
    ok = verify(store, run_id, run_dir, checkpoints, force=force) if dist.is_main else None  # before any compute
    if note_numerics and dist.is_main:
        _note_numerics(runner, run_id)
    task = runner.task(r)
    if key:  # the attacks, their ball and the checks read the task's threat model
        task.threat = dataclasses.replace(task.threat, norm=threat[0], eps=float(threat[1]))
        runner.reporter.message(f"{run_id}: evaluating under {threats.describe(*threat)} (trained under "
                                f"{threats.describe(getattr(own, 'norm', 'linf'), float(own.eps))}); stored apart")
    results, flags, checks = runner.evaluate(r, task, run_dir, checkpoints, suite)
    if dist.is_main:
        from .leaderboard_facts import facts as run_facts, threat_suite
        from .resolve import task_kind_cls

        facts = run_facts(task_kind_cls(runner.registry, r.spec), suite, results, runner.registry)
        record_suite(store, run_id, results, flags, checks, ["clean", *(a.id for a in suite.attacks)],
                     checkpoints=ok.sha256, replace=ok.replace, threat=key,
                     facts={**facts, **threat_suite(suite, key)} if key else facts)
        (run_dir / PARTIAL).unlink(missing_ok=True)
    dist.barrier()
    return True


def record_suite(store: Any, run_id: str, results: list[ResultRow], flags: list[FlagRow], checks: list[CheckRow],
                 suite: list[str], *, checkpoints: dict[str, str] | None = None, replace: Any = (),
                 facts: dict | None = None, threat: str = "") -> None:
    """Add an evaluation's rows (``suite``: its result ids) to the complete run ``run_id`` in one
    transaction (:meth:`natbench.store.Store.add_results`; ``facts``: what the leaderboard reads,
    :mod:`natbench.leaderboard_facts`; ``threat``: the threat-model key they were evaluated under,
    ``''`` the run's own).

    Sanity checks: those of an evaluation that saw every attack of the run's record (or whose
    checkpoint was replaced) replace the recorded ones; those of a partial evaluation (some attacks
    only) are merged into them, and a check failed in either stays failed -- a later, smaller suite
    never erases a gradient-masking symptom that the full one showed. Under another threat model the
    record is what was stored under it (its own checks, never mixed with the run's)."""
    replace = list(replace)
    recorded = (store.get_run(run_id).suite if not threat
                else [a for a in store.attacks(run_id, threat) if not a.startswith(ESCALATED.split("-")[0] + "-")])
    if not set(recorded) <= set(suite):
        checks = merge_checks(store.checks(run_id, threat), checks, replaced=set(replace))
    store.add_results(run_id, results, flags, checks, suite=suite, checkpoints=checkpoints, replace=replace, facts=facts,
                      threat=threat)


def merge_checks(recorded: Any, new: list[CheckRow], replaced: set[str] = frozenset()) -> list[CheckRow]:
    """``new`` checks merged into the ``recorded`` ones (:meth:`natbench.store.Store.checks`) of the
    same checkpoints (but those in ``replaced``): a new check is added, or replaces a recorded one of
    the same name when it failed; a recorded failure is kept."""
    out: list[CheckRow] = []
    for ckpt in dict.fromkeys(c.checkpoint for c in new):
        rows = recorded[recorded.checkpoint == ckpt] if ckpt not in replaced else recorded.iloc[:0]
        merged = {x.name: CheckRow(ckpt, x.name, bool(x.passed), x.detail) for x in rows.itertuples()}
        for c in new:
            if c.checkpoint == ckpt and (c.name not in merged or not c.passed):
                merged[c.name] = c
        out += merged.values()
    return out


def _note_numerics(runner: Any, run_id: str) -> None:
    """Say so when an evaluation computes with other numerics (device, threads, torch) than the run recorded."""
    from .threads import numerics

    rec, now = runner.store.get_run(run_id), numerics(runner.device)
    was = provenance.from_row(rec.device, rec.versions)
    if provenance.key(was) != provenance.key(now):
        runner.reporter.message(f"{run_id}: recorded with {provenance.describe(was)}; these results are computed with "
                                f"{provenance.describe(now)} (bit-identical only with the same; --threads)")
