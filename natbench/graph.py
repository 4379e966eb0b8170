"""The dependency runs of a run: the models its defense components need (NAT's adversary) and the
models its suite's attacks need (a transfer surrogate), each a run of another defense on the same
task, training profile and seed (:class:`natbench.contracts.Dependency`).

One definition of the graph, used by the runner (which trains or reuses each dependency before the
run that needs it, recursively) and by the sweep (which plans them as earlier stages). A dependency
on an existing run (``run``) or on an untrained initialisation (``checkpoint: init``) is a model, not
a run to train; a transfer surrogate that is the run itself is not a dependency either.
"""
from __future__ import annotations

from typing import Any

from .compose import Composite
from .config import from_dict
from .contracts import Dependency
from .resolve import Resolved, with_defense


def component_dependencies(composite: Composite) -> list[Dependency]:
    """The models the run's defense components need bound before training."""
    return [d for _, d in composite.dependencies()]


def attack_dependencies(reg: Any, suite: Any) -> list[Dependency]:
    """The models the attacks of ``suite`` need bound before evaluation (a transfer surrogate)."""
    deps: list[Dependency] = []
    for a in suite.attacks:
        cls = reg.load("attacks", a.attack)
        deps += list(getattr(cls(from_dict(cls.Params, a.params, f"suite.{a.id}.params")), "dependencies", ()))
    return deps


def is_run(dep: Dependency) -> bool:
    """Does ``dep`` stand for a run to train (or reuse)? Not for an existing run id, not for ``init``."""
    return not dep.run and dep.checkpoint != "init"


def dependency_run(reg: Any, r: Resolved, dep: Dependency) -> Resolved:
    """The run behind ``dep``: ``dep.defense`` (with ``dep.sets``) on ``r``'s task, profile and seed."""
    return with_defense(reg, r, dep.defense, dep.sets)


def needed_runs(reg: Any, r: Resolved, composite: Composite | None = None) -> list[Resolved]:
    """The runs ``r`` needs (its components' and its suite's dependencies), one per provenance hash,
    in order of first need; ``composite``: ``r``'s, when already built."""
    composite = composite if composite is not None else Composite.build(r.plan, r.params)
    out: dict[str, Resolved] = {}
    for dep in component_dependencies(composite) + attack_dependencies(reg, r.suite):
        if is_run(dep):
            dep_r = dependency_run(reg, r, dep)
            if dep_r.config_hash != r.config_hash:  # a surrogate that is the run itself is not a dependency
                out.setdefault(dep_r.config_hash, dep_r)
    return list(out.values())
