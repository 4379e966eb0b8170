"""One run's configuration, typed and frozen: :class:`RunConfig`.

Everything that identifies a run is derived from it, in one place: the stored config (``config.yaml``
and the store's ``config`` column), the provenance hash (what determines the trained model), the run id
and the leaderboard variant (what differs from the spec's defaults). :mod:`natbench.resolve` builds it
from command-line words or a saved ``config.yaml``, and validates it there.

Hash compatibility: the hashed dict is the stored config without the suite, without the performance
knobs of :data:`NOT_HASHED`, and without the fields of :data:`ABSENT_WHEN_EMPTY` when they are empty (they
were added after runs were stored), so every run id ever written still resolves to itself
(``tests/test_resolve.py`` pins them).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import yaml

from . import compose
from .config import config_hash, to_dict
from .safety import check_name
from .taskspec import ProfileCfg, SuiteSpec, TaskSpec

#: config paths left out of the provenance hash and of variants: they cannot change a result
NOT_HASHED = (("task", "data", "num_workers"), ("training", "gpu_resident"), ("training", "compile"),
              ("training", "suite"))  # the profile's default suite says what to evaluate, as --suite
#: fields added after runs were stored: absent from the hash when empty, so old hashes hold
ABSENT_WHEN_EMPTY = (("task", "params"), ("training", "sets"), ("training", "cycle_momentum"))
#: TaskSpec fields that are not part of a run's task (only the selected profile is, as ``training``)
_SPEC_ONLY = ("profiles", "default_profile", "threat_models")


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (built by :mod:`natbench.resolve`; never edited afterwards)."""

    spec: TaskSpec  # with profiles == {profile_name: profile} and default_profile == profile_name
    profile_name: str
    profile: ProfileCfg
    plan: compose.Plan  # the checked composition (compose.plan is called once per resolution)
    params: dict[str, Any]  # component -> its Params instance, in the plan's component order
    suite: SuiteSpec  # what to evaluate (not hashed: runs that differ in suite share training)
    seed: int

    def to_config(self) -> dict[str, Any]:
        """A fresh plain dict of canonical, typed values (``"8/255"`` -> 0.0313...): what is saved and hashed."""
        return {
            "task": {k: v for k, v in to_dict(self.spec).items() if k not in _SPEC_ONLY},
            "profile": self.profile_name,
            "training": to_dict(self.profile),
            "defense": {"canonical": self.plan.canonical, "params": {k: to_dict(v) for k, v in self.params.items()}},
            "suite": to_dict(self.suite),
            "seed": self.seed,
        }

    @cached_property
    def config(self) -> dict[str, Any]:
        """:meth:`to_config`, built once (``config.yaml``, the store's record); do not edit it."""
        return self.to_config()

    def hashed(self) -> dict[str, Any]:
        """The part of the config the provenance hash covers: what determines the trained model."""
        out = self.to_config()
        del out["suite"]
        for section, key in ABSENT_WHEN_EMPTY:
            if not out[section].get(key):
                out[section].pop(key, None)
        for path in NOT_HASHED:  # performance knobs that cannot change a number
            parent = out
            for key in path[:-1]:
                parent = parent.get(key, {})
            parent.pop(path[-1], None)
        return out

    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.hashed())

    @cached_property
    def run_id(self) -> str:
        """``<task>-<canonical defense>-s<seed>-<hash[:8]>``, checked to be a safe folder name."""
        check_name("task", self.spec.task, "rename 'task:' in the task YAML (it becomes the run's folder name)")
        return check_name("run id", f"{self.spec.task}-{self.plan.canonical}-s{self.seed}-{self.config_hash[:8]}")

    def variant_against(self, pristine: "RunConfig") -> str:
        """What this run changes with respect to ``pristine`` (the same run without ``--set``)."""
        return "" if pristine is self else variant_of(pristine.config, self.config)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def variant_of(pristine: dict, cfg: dict) -> str:
    """The --set keys (short form) whose resolved values differ from ``pristine``, sorted:
    ``"nat.omega=0.06 training.epochs=4"``. Seed and suite are not part of a variant."""
    a = _flat({k: v for k, v in pristine.items() if k not in ("seed", "suite")})
    b = _flat({k: v for k, v in cfg.items() if k not in ("seed", "suite")})
    out = []
    for key in sorted(set(a) | set(b)):
        if key == "defense.canonical" or a.get(key, None) == b.get(key, None) or tuple(key.split(".")) in NOT_HASHED:
            continue
        short = key.removeprefix("defense.params.").removeprefix("task.")
        value = b.get(key)
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        out.append(f"{short}={text}")
    return " ".join(out)
