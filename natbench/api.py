"""The Python API: the engine of the command line, callable from a script or a notebook.

```python
import natbench
res = natbench.evaluate(model, task="digits", suite="smoke", n=200)     # an nn.Module or a --model spec
res.clean, res.robust["pgd-5"], res.worst_case, res.flags, res.per_sample
run = natbench.train(task="digits", defense="trades+nat", seed=0, profile="quick")
natbench.leaderboard("digits")                                          # a pandas DataFrame
```

Same store, run ids and checks as ``natbench eval --task T --model SPEC`` / ``natbench run`` /
``natbench leaderboard``: an outside model is an *external run* (:mod:`natbench.external`) whose id is
derived from its source, spec, name, weights' sha256 and parameter count, so evaluating the same
weights again only adds the attacks the run has not seen. ``store=None`` evaluates without recording.
Accuracies are fractions in [0, 1] (the leaderboard shows percent).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

#: ``store=`` default: the store of the results root (``<root>/natbench.sqlite`` or ``$NATBENCH_DB``)
DEFAULT = "default"


def _root(root: str | Path | None) -> Path:
    return Path(root or os.environ.get("NATBENCH_ROOT") or "runs")


@dataclass
class Evaluation:
    """What :func:`evaluate` measured (fractions in [0, 1] of the task's headline metric)."""

    run_id: str | None  # the external run in the store (None with store=None)
    task: str
    metric: str  # the headline metric (accuracy; re-id: mAP)
    clean: float
    robust: dict[str, float]  # attack id (suite order, escalated ones after) -> metric under it
    worst_case: float  # fraction of samples correct on clean inputs and under every attack (from per_sample)
    flags: list[str]  # names of the sanity checks that failed (docs/flags.md); [] when all passed
    checks: list[dict] = field(default_factory=list)  # every check: name, passed, detail
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)  # "clean" and attack id -> bool per sample
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # evaluation -> every metric recorded
    provenance: dict[str, Any] = field(default_factory=dict)  # source, spec, name, weights_sha256, params, ...


@dataclass
class TrainedRun:
    """A run :func:`train` trained (or found complete) and evaluated."""

    run_id: str
    task: str
    defense: str
    seed: int
    results: dict[str, dict[str, float]]  # checkpoint -> attack id -> headline metric (fraction)


# ------------------------------------------------------------------------------------------ n samples
class _Head:
    """The first ``n`` samples of a test loader (batches cut with ``Batch.rows``)."""

    def __init__(self, loader: Any, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        bs = getattr(self.loader, "batch_size", self.n) or self.n
        return min(len(self.loader), math.ceil(self.n / bs))

    def __iter__(self):
        left = self.n
        for b in self.loader:
            if left <= 0:
                break
            b = b.rows(0, left) if len(b) > left else b
            left -= len(b)
            yield b


class _Subset:
    """A task whose test loader stops after ``n`` samples (everything else is the task's)."""

    def __init__(self, task: Any, n: int):
        self._task, self._n = task, n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def loaders(self, *args: Any, **kwargs: Any):
        train, val, test = self._task.loaders(*args, **kwargs)
        return train, val, _Head(test, self._n)


# ------------------------------------------------------------------------------------------ evaluate
def evaluate(model: Any, task: str, suite: str | None = None, *, data_root: str | Path | None = None,
             n: int | None = None, weights: str | Path | None = None, name: str | None = None,
             normalize: str | None = None, root: str | Path | None = None, db: str | None = None,
             store: Any = DEFAULT, device: str = "auto", reporter: Any = None) -> Evaluation:
    """Evaluate an outside model on ``task`` under ``suite`` (default: the task's suite).

    ``model`` is an ``nn.Module`` (taking [0, 1] pixels, returning the task's logits; see
    :mod:`natbench.external` for re-id and detection) or a ``--model`` spec string (``"my.py:build"``,
    ``"timm:resnet18"``, ``"torchscript:m.pt"``, ``"robustbench:<name>"``) with optional ``weights``.
    ``normalize``: ``"none"`` (default) or ``"mean,std"`` (see :func:`natbench.external.parse_normalize`).
    ``n``: evaluate the first ``n`` test samples only (classification; part of the run's identity).
    Before any attack the output contract is checked (a ConfigError, nothing recorded) and the clean
    metric, determinism and input gradient are reported; the recorded sanity checks and their
    escalations are those of trained runs (``Runner.evaluate``). ``store``: ``"default"`` records in
    the store of ``root`` (``--root``; or ``db``), ``None`` records nothing.
    """
    from .external import CHECKPOINT, PROFILE, External, check_output, identity, load, state_sha256
    from .registry import get_registry
    from .resolve import data_root as resolve_data_root, load_task, resolve
    from .runner import PARTIAL, Reporter, Runner, git_revision, pick_device, versions
    from .leaderboard_facts import facts as run_facts
    from .store import RunRecord
    from .taskspec import load_suite_spec
    from .config import to_dict

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    if n is not None and n < 1:
        raise ConfigError(f"n={n}: expected a positive number of test samples")
    if store is not None and store != DEFAULT:
        raise ConfigError(f"store={store!r}: expected 'default' (the store of root/db) or None (record nothing)")
    reg = get_registry()
    spec = load_task(reg, task)
    suite_spec = load_suite_spec(reg.entry("suites", suite or spec.suite).spec_path())
    for a in suite_spec.attacks:  # before resolve(): its message would blame the placeholder defense
        if (a.objective or getattr(reg.load("attacks", a.attack), "objective_kind", None)) == "defense":
            raise ConfigError(f"suite {suite_spec.suite}: {a.id} attacks a defense's training objective, which an "
                              f"outside model does not have; choose another --suite")
    r0 = resolve(reg, task, "vanilla", suite=suite)  # task, data, eval batch size, suite: validated as for a run
    root_p = _root(root)
    runner = Runner(root_p, resolve_data_root(str(data_root) if data_root is not None else None), pick_device(device),
                    reporter or Reporter(), reg, db=db)
    t = runner.task(r0)
    t.check_data()
    if n is not None:
        if r0.spec.kind != "classification":
            raise ConfigError(f"n={n}: evaluating the first n test samples is for classification tasks; "
                              f"task {r0.task} is {r0.spec.kind}")
        t = _Subset(t, n)
    if isinstance(model, str):
        ext = load(model, t, weights=weights, name=name, normalize=normalize, model_dir=root_p / "robustbench-models")
    else:
        ext = _from_module(model, t, weights, name, normalize)
    bs = r0.profile.eval_batch_size
    import torch

    test = t.loaders(bs, torch.Generator().manual_seed(0), bs)[2]
    first = next(iter(test), None)
    if first is None:
        raise ConfigError(f"task {r0.task}: the test set is empty; check --data-root")
    where = ext.provenance["spec"]
    check_output(ext, t, first.to("cpu"), where)
    h, run_id = identity(ext.provenance, r0.config["task"], n)
    r = dataclasses.replace(r0, config_hash=h, run_id=run_id)
    _preflight(runner, t, ext, test, run_id)

    db_store = runner.store if store is not None else None
    attacks = suite_spec.attacks
    existing = db_store.get_run(run_id) if db_store is not None else None
    if existing is not None:
        attacks = tuple(a for a in attacks if a.id not in existing.suite)
        if not attacks:
            runner.reporter.message(f"{run_id}: already evaluated with every attack of suite {suite_spec.suite}")
            return _from_store(db_store, run_id, r0, ext)
        runner.reporter.message(f"{run_id}: adding {', '.join(a.id for a in attacks)} to the external run")
    suite_run = dataclasses.replace(suite_spec, attacks=tuple(attacks))
    tmp = tempfile.TemporaryDirectory(prefix="natbench-external-") if db_store is None else None
    run_dir = Path(tmp.name) if tmp is not None else root_p / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        results, flags, checks = runner.evaluate(r, t, run_dir, (CHECKPOINT,), suite_run, external=ext)
    finally:
        if tmp is not None:
            tmp.cleanup()
    wall = round(time.perf_counter() - t0, 3)
    ids = ["clean", *(a.id for a in attacks)]
    if db_store is None:
        return _from_rows(None, r0, ext, results, flags, checks)
    if existing is not None:
        from .suite import record_suite

        record_suite(db_store, run_id, results, flags, checks, ids,  # as for a trained run: recorded checks kept
                     facts=run_facts(t, suite_run, results))
    else:
        config = {"external": ext.provenance, "task": r0.config["task"], "suite": to_dict(suite_spec), "n": n,
                  "seed": 0, "eval_batch_size": bs}
        record = RunRecord(run_id=run_id, task=r0.task, defense=ext.provenance["name"], profile=PROFILE, seed=0,
                           config_hash=h, git_rev=git_revision(), versions=versions(), device=_device_column(runner.device),
                           started=started, finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           wall_train_s=0.0, wall_eval_s=wall, config=config, suite=ids)
        db_store.record_run(record, results, flags, checks, facts=run_facts(t, suite_run, results))
        (run_dir / "record.json").write_text(json.dumps({**to_dict(record), "provenance": ext.provenance}, indent=1, default=str))
    (run_dir / PARTIAL).unlink(missing_ok=True)
    runner.reporter.message(f"{run_id}: recorded ({wall:.1f}s)")
    return _from_store(db_store, run_id, r0, ext)


def _from_module(model: Any, task: Any, weights: Any, name: str | None, normalize: str | None) -> Any:
    """An ``nn.Module`` handed over directly: wrapped like a ``--model`` (source ``python``)."""
    from torch import nn

    from .external import External, Normalized, ReIDEmbedding, file_sha256, load_weights, parse_normalize, read_state_dict, state_sha256

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch.nn.Module or a --model spec string, got {type(model).__name__}")
    kind = task.spec.kind
    norm = parse_normalize(normalize, task.spec.model.in_channels)
    if weights is not None:
        load_weights(model, read_state_dict(Path(weights)), str(weights))
    sha = file_sha256(Path(weights)) if weights is not None else state_sha256(model)
    if kind == "reid":
        wrapped = ReIDEmbedding(model, norm)
    elif kind == "detection":
        from .tasks.detection import DetectionNet

        if not isinstance(model, DetectionNet) or norm is not None:
            raise ConfigError("model: an outside detection model must be a natbench.tasks.detection.DetectionNet, without normalize")
        wrapped = model
    else:
        wrapped = Normalized(model, *norm) if norm else model
    spec = f"python:{type(model).__module__}.{type(model).__qualname__}"
    prov = {"source": "python", "spec": spec, "name": name or type(model).__name__, "weights": str(weights or ""),
            "weights_sha256": sha, "sha256_of": "weights file" if weights is not None else "state dict",
            "params": int(sum(p.numel() for p in model.parameters())),
            "normalize": [list(norm[0]), list(norm[1])] if norm else "none"}
    return External(wrapped, prov)


def _preflight(runner: Any, task: Any, ext: Any, test: Any, run_id: str) -> None:
    """Report the clean metric, determinism and input gradient on the first test batch before any
    attack (the recorded checks run in ``Runner.evaluate``, as for trained runs)."""
    import torch

    model, dev = ext.model.to(runner.device), runner.device
    metric = getattr(task, "headline_metric", "accuracy")
    clean = task.evaluate(model, test, None, device=dev).metrics[metric]
    msg = f"{run_id}: {ext.provenance['params']:,} parameters, clean {metric} {100 * clean:.2f}%"
    if "ce" in getattr(task, "OBJECTIVES", ()):
        batch = next(iter(test)).to(dev)
        model.eval()
        with torch.no_grad():
            same = torch.equal(model(batch.x), model(batch.x))
        x = batch.x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(task.objective(model, batch, "ce")(x).sum(), x)
        nz = float((g.flatten(1).abs().amax(1) > 0).float().mean())
        msg += f"; deterministic: {'yes' if same else 'NO'}; input gradient non-zero for {100 * nz:.0f}% of a batch"
        if not same or nz < 0.5:
            msg += " (flagged; escalated attacks follow, docs/flags.md)"
    runner.reporter.message(msg)


def _from_rows(run_id: str | None, r0: Any, ext: Any, results: list, flags: list, checks: list) -> Evaluation:
    metrics: dict[str, dict[str, float]] = {}
    for x in results:
        metrics.setdefault(x.attack, {})[x.metric] = x.value
    per_sample = {f.attack: np.asarray(f.correct, dtype=bool) for f in flags}
    return _evaluation(run_id, r0, ext, metrics, per_sample, [{"name": c.name, "passed": bool(c.passed), "detail": c.detail} for c in checks])


def _from_store(store: Any, run_id: str, r0: Any, ext: Any) -> Evaluation:
    from .external import CHECKPOINT

    res = store.results(r0.task)
    res = res[(res["run_id"] == run_id) & (res["checkpoint"] == CHECKPOINT)]
    metrics: dict[str, dict[str, float]] = {}
    for row in res.itertuples(index=False):
        metrics.setdefault(row.attack, {})[row.metric] = float(row.value)
    checks = [{"name": c.name, "passed": bool(c.passed), "detail": c.detail}
              for c in store.checks(run_id).itertuples(index=False) if c.checkpoint == CHECKPOINT]
    return _evaluation(run_id, r0, ext, metrics, store.flags(run_id, CHECKPOINT), checks)


def _evaluation(run_id, r0, ext, metrics, per_sample, checks) -> Evaluation:
    from .resolve import task_kind_cls
    from .registry import get_registry

    metric = getattr(task_kind_cls(get_registry(), r0.spec), "headline_metric", "accuracy")
    robust = {a: m.get(metric, float("nan")) for a, m in metrics.items() if a != "clean"}
    flags_all = list(per_sample.values())
    worst = float(np.logical_and.reduce(flags_all).mean()) if flags_all and len({len(f) for f in flags_all}) == 1 else float("nan")
    return Evaluation(run_id=run_id, task=r0.task, metric=metric, clean=metrics.get("clean", {}).get(metric, float("nan")),
                      robust=robust, worst_case=worst, flags=[c["name"] for c in checks if not c["passed"]], checks=checks,
                      per_sample=dict(per_sample), metrics=metrics, provenance=dict(ext.provenance))


# ------------------------------------------------------------------------------------------ train / leaderboard
def train(task: str, defense: str, *, seed: int = 0, profile: str | None = None, suite: str | None = None,
          sets: list[str] | tuple[str, ...] = (), root: str | Path | None = None, db: str | None = None,
          data_root: str | Path | None = None, device: str = "auto", force: bool = False,
          reporter: Any = None) -> TrainedRun:
    """``natbench run --task T --defense D --seed S [--profile P] [--set k=v]...``: train (dependencies
    first) unless a complete identical run exists, evaluate its suite, record; return its results."""
    from .registry import get_registry
    from .resolve import data_root as resolve_data_root, resolve
    from .runner import Reporter, Runner, pick_device

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    reg = get_registry()
    r = resolve(reg, task, defense, profile=profile, seed=seed, sets=list(sets), suite=suite)
    runner = Runner(_root(root), resolve_data_root(str(data_root) if data_root is not None else None),
                    pick_device(device), reporter or Reporter(), reg, db=db)
    run_id = runner.run(r, force=force)
    metric = getattr(runner.task(r), "headline_metric", "accuracy")
    res = runner.store.results(r.task)
    res = res[(res["run_id"] == run_id) & (res["metric"] == metric)]
    out: dict[str, dict[str, float]] = {}
    for row in res.itertuples(index=False):
        out.setdefault(row.checkpoint, {})[row.attack] = float(row.value)
    return TrainedRun(run_id=run_id, task=r.task, defense=r.defense, seed=r.seed, results=out)


class CallableModule(types.ModuleType):
    """The class of the module ``natbench.leaderboard``: ``natbench.leaderboard(task)`` is the API
    function :func:`leaderboard`, while ``from natbench import leaderboard as lb; lb.table(...)``
    keeps working (a package attribute cannot be both a function and a submodule otherwise)."""

    def __call__(self, task: str, **kwargs: Any) -> Any:
        return leaderboard(task, **kwargs)


def leaderboard(task: str, *, root: str | Path | None = None, db: str | None = None) -> Any:
    """The leaderboard of ``task`` as ``natbench leaderboard --task T --format csv`` has it (a
    pandas DataFrame, values in percent)."""
    from . import leaderboard as lb
    from .errors import RunError
    from .store import Store, store_exists, store_url

    if not store_exists(_root(root), db):
        raise RunError(f"no results store at {store_url(_root(root), db)}; run something first")
    store = Store(store_url(_root(root), db))
    try:
        return lb.table(store, task)
    finally:
        store.close()


def _device_column(device: Any) -> str:
    """The store's device value with the numerics (threads, GPU) of this evaluation (natbench.provenance)."""
    from .provenance import device_column
    from .threads import numerics

    return device_column(numerics(device))
