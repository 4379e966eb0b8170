"""From command-line words to a fully validated, hashable run configuration.

Everything a run will use -- task spec, training profile, composed defense and its parameters,
attack suite, seed, ``--set`` overrides -- is resolved and checked here, before any data is read
or any model is built. The resolved config is what is saved as ``config.yaml`` and hashed.

``--set`` keys: ``training.<field>`` (the selected profile), ``data.*``, ``model.*``,
``threat_model.*``, ``selection.*`` (short for ``task.<...>``), and ``<component>.<param>`` for a
component of the composed defense (e.g. ``nat.omega=0.06``, ``trades.beta=3``).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import compose
from .config import ConfigError, apply_path, from_dict, parse_set, to_dict
from .errors import CompositionError, DataError, suggest
from .registry import Registry
from .preflight import check_model_cfg
from .runconfig import NOT_HASHED, RunConfig, variant_of  # noqa: F401 - NOT_HASHED, variant_of: re-exported
from .taskspec import ProfileCfg, SuiteSpec, TaskSpec, load_suite_spec, load_task_spec

TASK_SHORTHANDS = ("data", "model", "threat_model", "selection")
#: objective kind built by the runner from the run's composition (adaptive attacks), not by the task
DEFENSE_OBJECTIVE = "defense"
#: task fields that choose *what* runs; they have their own options (or cannot change per run)
FIXED_TASK_FIELDS = {"task": "the task name is fixed; use --task", "kind": "the task kind is fixed by the spec",
                     "suite": "use --suite", "default_profile": "use --profile", "defense_params": "use --set <component>.<param>=..."}


def _of_run(name: str, doc: str = "") -> property:
    """A read-only view of the :class:`RunConfig` field ``name`` on :class:`Resolved`."""
    return property(lambda self: getattr(self.run_config, name), doc=doc or f"``run_config.{name}``")


@dataclass(frozen=True)
class Resolved:
    """A validated run: its typed :class:`RunConfig` and the identity derived from it (``config_hash``
    and ``run_id`` are fields so that an external model's evaluation can carry its own identity)."""

    run_config: RunConfig
    config_hash: str
    run_id: str
    variant: str = ""  # what differs from the spec's defaults ("nat.omega=0.06 training.epochs=4"); a leaderboard key
    pristine: RunConfig | None = None  # the run without any --set (to derive dependencies' variants)

    @classmethod
    def of(cls, run: RunConfig, pristine: RunConfig | None = None) -> "Resolved":
        variant = run.variant_against(pristine) if pristine is not None else ""
        return cls(run, run.config_hash, run.run_id, variant, pristine)

    config = _of_run("config", "The plain config (``config.yaml``, the store's record), built once; do not edit it.")
    spec = _of_run("spec", "The TaskSpec (only the selected profile).")
    profile_name = _of_run("profile_name")
    profile = _of_run("profile", "The ProfileCfg (``training``).")
    plan = _of_run("plan", "The checked composition; build the run's ``Composite`` from it (no second ``compose.plan``).")
    params = _of_run("params", "component -> Params instance")
    suite = _of_run("suite", "The SuiteSpec to evaluate.")
    seed = _of_run("seed")

    def with_suite(self, suite: SuiteSpec) -> "Resolved":
        """The same run (same hash and run id: the suite is not hashed) evaluated with ``suite``."""
        return dataclasses.replace(self, run_config=dataclasses.replace(self.run_config, suite=suite))

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def defense(self) -> str:
        return self.plan.canonical


def load_task(reg: Registry, task: str) -> TaskSpec:
    """A registered task name, or a path to a task YAML (``my_task.yaml``)."""
    if task.endswith((".yaml", ".yml")) or os.sep in task:
        return load_task_spec(Path(task))
    return load_task_spec(reg.entry("tasks", task).spec_path())


def load_suite(reg: Registry, suite: str) -> SuiteSpec:
    """A registered suite name, or a path to a suite YAML (``my_suite.yaml``), as ``--task`` takes either."""
    if suite.endswith((".yaml", ".yml")) or os.sep in suite:
        return load_suite_spec(Path(suite))
    return load_suite_spec(reg.entry("suites", suite).spec_path())


def task_kind_cls(reg: Registry, spec: TaskSpec) -> type:
    return reg.load("task_kinds", spec.kind)  # an unknown kind raises UnknownNameError (did-you-mean)


def resolve(reg: Registry, task: str, defense: str, *, profile: str | None = None, seed: int = 0,
            sets: list[str] | tuple[str, ...] = (), suite: str | None = None) -> Resolved:
    """Resolve and validate; raise a NatbenchError (exit 2) on any user error."""
    if seed < 0:
        raise ConfigError(f"--seed {seed}: seeds are non-negative integers")
    spec = load_task(reg, task)
    kind_cls = task_kind_cls(reg, spec)
    for name in spec.defense_params:
        if not any(reg.has(k, name) for k in compose.COMPONENT_KINDS):
            names = [n for k in compose.COMPONENT_KINDS for n in reg.names(k)]
            raise ConfigError(f"task {spec.task}: defense_params.{name} names no defense, regularizer or perturbation.{suggest(name, names)}")
    plan = compose.plan(defense, reg, frozenset(kind_cls.capabilities), spec.kind)
    pname = profile or spec.default_profile
    if pname not in spec.profiles:
        raise ConfigError(f"--profile '{pname}': task {spec.task} has no such profile.{suggest(pname, spec.profiles)} Available: {', '.join(spec.profiles)}")
    named_suite = suite or spec.profiles[pname].suite  # --suite, else the profile's (they win over a norm's suite)
    suite = load_suite(reg, named_suite or spec.suite)
    cfg = {
        "task": to_dict(spec),
        "profile": pname,
        "training": to_dict(spec.profiles[pname]),
        "defense": {"canonical": plan.canonical, "params": plan.default_params(spec.defense_params)},
        "suite": to_dict(suite),
        "seed": seed,
    }
    del cfg["task"]["profiles"]  # only the selected profile is part of the run (as `training`)
    cfg["task"].pop("threat_models", None)  # per-norm defaults: applied below, not part of the run
    _apply_sets(reg, cfg, _profile_sets(reg, spec.profiles[pname].sets, cfg), plan)  # the profile's own overrides (not a variant)
    pristine = _typed(reg, cfg, plan, kind_cls)
    if not sets:
        return Resolved.of(pristine, pristine)
    cfg = copy.deepcopy(cfg)  # the typed pristine may share nested values of type Any with cfg
    _apply_sets(reg, cfg, sets, plan)
    norm_suite = _norm_defaults(spec, cfg, sets, plan)
    if cfg["task"]["threat_model"]["norm"] == pristine.spec.threat_model.norm:
        return Resolved.of(_typed(reg, cfg, plan, kind_cls, suite=pristine.suite), pristine)  # --set cannot change the suite
    if not named_suite and norm_suite:  # another norm: its own suite, unless --suite or the profile names one
        cfg["suite"] = to_dict(load_suite(reg, norm_suite))
    return Resolved.of(_typed(reg, cfg, plan, kind_cls), pristine)  # the suite checked in the run's norm


def _norm_defaults(spec: TaskSpec, cfg: dict, sets, plan: compose.Plan) -> str:
    """Apply the spec's ``threat_models.<norm>`` defaults when ``--set threat_model.norm`` chose a norm other
    than the spec's own: each field not given by an explicit ``--set threat_model.<field>`` (which wins).
    Returns that norm's default suite ("" when none)."""
    tm = cfg["task"]["threat_model"]
    norm = tm.get("norm")
    if norm == spec.threat_model.norm:
        return ""
    explicit = {tuple(path[-1:]) for path, _ in parse_set(sets)
                if list(path[:-1]) in (["threat_model"], ["task", "threat_model"])}
    if norm not in spec.threat_models:
        if norm in ("linf", "l2", "l1"):
            check_defense_norm(plan, norm)  # a defense that cannot train in it says so first
        if ("eps",) not in explicit and norm in ("linf", "l2", "l1"):  # the spec's eps is a radius in another norm
            raise ConfigError(f"--set threat_model.norm={norm}: task {spec.task} states no {norm} defaults "
                              f"(threat_models.{norm} in its spec), and its eps {tm.get('eps'):g} is an "
                              f"{spec.threat_model.norm} radius; give one, e.g. --set threat_model.eps=0.5")
        return ""
    d = spec.threat_models[norm]
    for name in ("eps", "train_steps", "train_step_size"):
        value = getattr(d, name)
        if value is not None and (name,) not in explicit:
            tm[name] = value
    return d.suite


def _profile_sets(reg: Registry, sets, cfg: dict, components_only: bool = False) -> list[str]:
    """A profile's ``sets`` without those naming a component that is not part of the defense: a
    method recipe's params (``awp.gamma=0.01`` in ``at-awp``) apply when the method is composed in, and
    the same schedule still serves its baseline (``pgd-at --profile at-awp``). ``components_only``:
    only the defense's own params (a dependency run re-derives them for its defense)."""
    keep = []
    for item, (path, _) in zip(sets, parse_set(sets)):
        mine = path[0] in cfg["defense"]["params"]
        if (components_only and not mine) or (not mine and any(reg.has(k, path[0]) for k in compose.COMPONENT_KINDS)):
            continue
        keep.append(item)
    return keep


def _apply_sets(reg: Registry, cfg: dict, sets, plan: compose.Plan) -> None:
    """Apply ``--set key=value`` overrides to the plain config dict (validated later by _typed)."""
    for path, value in parse_set(sets):
        where = ".".join(path)
        if path[0] in TASK_SHORTHANDS:
            path = ["task", *path]
        elif path[0] in cfg["defense"]["params"]:
            path = ["defense", "params", *path]
        elif path[0] == "task" and len(path) > 1 and path[1] in FIXED_TASK_FIELDS:
            raise ConfigError(f"--set {where}: cannot be overridden; {FIXED_TASK_FIELDS[path[1]]}")
        elif any(reg.has(k, path[0]) for k in compose.COMPONENT_KINDS):
            raise ConfigError(f"--set {where}: {path[0]} is not part of --defense {plan.canonical}; "
                              f"add it (e.g. {plan.base.name}+{path[0]}) or drop this --set")
        elif path[0] not in ("training", "task"):
            allowed = ["training", "task", *TASK_SHORTHANDS, *cfg["defense"]["params"]]
            raise ConfigError(f"--set {where}: unknown key '{path[0]}'.{suggest(path[0], allowed)} Allowed: {', '.join(allowed)}")
        if len(path) < 2:
            raise ConfigError(f"--set {where}: give a field, e.g. --set training.epochs=3")
        apply_path(cfg, path, value, where)


def _typed(reg: Registry, cfg: dict, plan: compose.Plan, kind_cls: type, suite: SuiteSpec | None = None) -> RunConfig:
    """Validate the plain ``cfg`` strictly into a :class:`RunConfig` (its run id included); ``suite``:
    already read and checked for this plan (else ``cfg["suite"]`` is, here)."""
    task_dict = {**cfg["task"], "profiles": {cfg["profile"]: cfg["training"]}, "default_profile": cfg["profile"]}
    spec = from_dict(TaskSpec, task_dict, "task")
    kind_params = getattr(kind_cls, "Params", None)
    if kind_params is not None:
        from_dict(kind_params, spec.params, "task.params")
    elif spec.params:
        raise ConfigError(f"task.params: task kind {spec.kind} takes no parameters; drop them")
    if spec.kind == "classification":  # natbench.models.build; re-id and detection build their own networks
        check_model_cfg(spec.model, "task.model")  # the architecture exists and fits its settings: no run folder otherwise
    profile = from_dict(ProfileCfg, cfg["training"], "training")
    params = compose.check_params(plan, cfg["defense"]["params"])
    check_defense_norm(plan, spec.threat_model.norm)
    if suite is None:
        suite = from_dict(SuiteSpec, cfg["suite"], "suite")
        check_suite(reg, suite, plan, kind_cls, spec)
    run = RunConfig(spec, cfg["profile"], profile, plan, params, suite, cfg["seed"])
    run.run_id  # noqa: B018 - the task name and run id must be safe folder names: checked now
    return run


def check_suite(reg: Registry, suite: SuiteSpec, plan: compose.Plan, kind_cls: type, spec: TaskSpec) -> None:
    """Every attack of ``suite`` exists, takes its params, supports the threat model's norm, gets an
    objective the task (or, for kind ``"defense"``, the run's composition) offers, and names dependency
    defenses that exist."""
    from .attacks._base import with_norm

    for a in suite.attacks:
        cls = reg.load("attacks", a.attack)
        attack = cls(from_dict(cls.Params, a.params, f"suite.{a.id}.params"))
        with_norm(attack, spec.threat_model.norm, f"suite.{a.id}")
        obj = a.objective or cls.objective_kind
        if getattr(cls, "threat", None) == "corruption":  # natbench.attacks.corruption: no objective, any task kind
            continue
        if obj == DEFENSE_OBJECTIVE:  # built by the runner from the composition, not by the task
            if "logits" not in getattr(kind_cls, "OBJECTIVES", ("logits",)):
                raise ConfigError(f"suite.{a.id}: the adaptive attack (objective 'defense') needs a classification "
                                  f"task; task kind {spec.kind} evaluates other objectives; drop {a.id} from the suite")
            if not callable(getattr(plan.base.cls, "adaptive_loss", None)):
                raise CompositionError(f"suite.{a.id}: objective 'defense' needs the training objective of the base "
                                       f"defense, which {plan.base.name} does not define; drop {a.id} from the suite")
        elif obj not in getattr(kind_cls, "OBJECTIVES", (obj,)):
            raise ConfigError(f"suite.{a.id}: objective '{obj}' is not offered by task kind {spec.kind}")
        needs = getattr(attack, "needs_objective", None)  # (objective, why) these params require, or None
        if needs is not None and obj != needs[0]:
            raise ConfigError(f"suite.{a.id}: {a.attack} with {needs[1]} needs objective '{needs[0]}', got '{obj}'; "
                              f"add 'objective: {needs[0]}' to the suite entry")
        for dep in getattr(attack, "dependencies", ()):  # a bad surrogate name fails now, not after training
            if not dep.run:
                compose.plan(dep.defense, reg, frozenset(kind_cls.capabilities), spec.kind)


#: why a base defense trains in no L1 ball (the message of the refusal)
L1_TRAINING = ("L1 adversarial training has no reference recipe in natbench; train in linf or l2 and evaluate in l1 "
               "with `natbench eval RUN --threat-model l1:EPS`")


def check_defense_norm(plan: compose.Plan, norm: str) -> None:
    """Every component that attacks during training runs its attack in the threat model's ``norm``: a
    component's class lists the norms it trains in as ``norms``; a base defense without the attribute
    trains in L-inf only, the other components (regularizers, weight perturbations, averagers) use the
    base's x' and train in any norm unless they say otherwise."""
    from .attacks._base import NORMS

    for c in plan.components:
        norms = tuple(getattr(c.cls, "norms", ("linf",) if c.kind == "defenses" else NORMS))
        if norm in norms:
            continue
        if norm == "l1" and c.kind == "defenses":
            raise ConfigError(f"threat_model.norm: {c.name} trains in {', '.join(norms)}; {L1_TRAINING}")
        others = [n for n in ("pgd-at", "trades", "mart") if n != c.name]
        fix = f"pick a base that trains in {norm} (e.g. {', '.join(others)})" if norm == "l2" and c.kind == "defenses" \
            else "drop it from --defense"
        raise ConfigError(f"threat_model.norm: {c.name}'s training attack supports the norms {', '.join(norms)}, not "
                          f"'{norm}'; train with --set threat_model.norm={norms[0]} or {fix}")


def with_defense(reg: Registry, r: Resolved, defense: str, sets: tuple[str, ...] | list[str] = ()) -> Resolved:
    """The same task, data, model, training and seed, trained with another defense (a dependency);
    ``sets`` are ``--set`` overrides of that run (e.g. ``model.arch=densenet121`` for an adversary
    of another architecture)."""
    kind_cls = task_kind_cls(reg, r.spec)
    plan = compose.plan(defense, reg, frozenset(kind_cls.capabilities), r.spec.kind)

    def rebased(run: RunConfig) -> dict:
        cfg = run.to_config()
        cfg["defense"] = {"canonical": plan.canonical, "params": plan.default_params(r.spec.defense_params)}
        _apply_sets(reg, cfg, _profile_sets(reg, r.profile.sets, cfg, components_only=True), plan)  # the recipe's method params
        return cfg

    cfg = rebased(r.run_config)
    _apply_sets(reg, cfg, sets, plan)
    run = _typed(reg, cfg, plan, kind_cls)
    if r.pristine is None:
        return Resolved.of(run)
    return Resolved.of(run, _typed(reg, rebased(r.pristine), plan, kind_cls, suite=run.suite))  # the suite checked just now


def from_run_config(reg: Registry, cfg: dict) -> Resolved:
    """Re-validate a saved ``config.yaml`` (for ``natbench eval`` and resumption)."""
    kind_cls = task_kind_cls(reg, from_dict(TaskSpec, {**cfg["task"], "profiles": {cfg["profile"]: cfg["training"]},
                                                      "default_profile": cfg["profile"]}, "task"))
    plan = compose.plan(cfg["defense"]["canonical"], reg, frozenset(kind_cls.capabilities), cfg["task"]["kind"])
    return Resolved.of(_typed(reg, cfg, plan, kind_cls))


def data_root(explicit: str | None) -> Path | None:
    """``--data-root`` or ``NATBENCH_DATA``; an explicitly named root must exist."""
    value = explicit or os.environ.get("NATBENCH_DATA")
    if value is None:
        p = Path("data")
        return p if p.is_dir() else None
    p = Path(value)
    if not p.is_dir():
        src = "--data-root" if explicit else "NATBENCH_DATA"
        raise DataError(f"{src} {value}: no such directory; create it or write a fixture there with: natbench data fixture <dataset> --out {value}")
    return p
