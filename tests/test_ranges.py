"""Tests for natbench.ranges: every numeric field of every registered plugin and of the task schema
declares a valid range, the shipped specs are inside them, and values outside are refused."""
from __future__ import annotations

import dataclasses

import pytest

from natbench import ranges, taskspec
from natbench.config import from_dict
from natbench.contracts import ThreatModel
from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.resolve import resolve

SCHEMAS = [taskspec.DataCfg, taskspec.ModelCfg, taskspec.ProfileCfg, taskspec.SelectionCfg, taskspec.ThreatCfg, ThreatModel,
           taskspec.NormDefaults]


def _plugin_params():
    reg = get_registry()
    out = {}
    for kind in ("defenses", "regularizers", "perturbations", "averagers", "attacks", "task_kinds"):
        for name in reg.names(kind):
            p = getattr(reg.load(kind, name), "Params", None)
            if p is not None and dataclasses.is_dataclass(p):
                out[ranges.key(p)] = p
    return list(out.values())


@pytest.mark.parametrize("cls", SCHEMAS + _plugin_params(), ids=ranges.key)
def test_every_numeric_field_declares_a_range(cls):
    declared = ranges.ranges_of(cls)
    missing = [f for f in ranges.numeric_fields(cls) if f not in declared]
    assert not missing, f"{ranges.key(cls)}: declare ranges for {missing} in natbench/ranges.py"
    unknown = set(declared) - {f.name for f in dataclasses.fields(cls)}
    assert not unknown, f"{ranges.key(cls)}: ranges for fields that do not exist: {unknown}"
    for field in dataclasses.fields(cls):  # the defaults themselves are valid
        if field.name in declared and field.default is not dataclasses.MISSING:
            ranges.check(cls, field.name, field.default, field.name)


def test_ranges_table_names_real_classes():
    known = {ranges.key(c) for c in SCHEMAS + _plugin_params()}
    assert set(ranges.RANGES) <= known, set(ranges.RANGES) - known


@pytest.mark.parametrize("text,inside,outside", [
    ("[0, 1]", [0, 0.5, 1], [-1e-9, 1.0001]), ("[0, 1)", [0, 0.999], [1]), ("(0, 10]", [1e-9, 10], [0, 10.5]),
    ("[1, 100000]", [1, 100000], [0, 99999999999999999999999]), ("[-100, 100]", [-100], [-101]),
])
def test_interval_parsing(text, inside, outside):
    r = ranges.parse(text)
    assert all(v in r for v in inside) and not any(v in r for v in outside)


@pytest.mark.parametrize("bad", ["0, 1", "[1, 0]", "[a, 1]", "[0 1]"])
def test_malformed_interval(bad):
    with pytest.raises(ValueError):
        ranges.parse(bad)


@pytest.mark.parametrize("sets,needle", [
    (["training.epochs=99999999999999999999999"], "epochs: 99999999999999999999999 is outside the valid range [1, 100000]"),
    (["nat.omega=-1"], "nat.omega: -1.0 is outside the valid range [0, 10000]"),
    (["nat.tau=1e9"], "nat.tau: 1000000000.0 is outside the valid range (0, 1000]"),
    (["training.milestones=[3, -1]"], "milestones: -1 is outside"),
    (["model.mean=[100]"], "mean: 100.0 is outside"),
    (["threat_model.train_steps=1000000"], "train_steps: 1000000 is outside"),
])
def test_out_of_range_values_are_refused_at_resolve(sets, needle):
    with pytest.raises(ConfigError) as e:
        resolve(get_registry(), "digits", "nat", sets=sets)
    assert needle in str(e.value)


def test_suite_attack_params_are_range_checked():
    from natbench.attacks.pgd import PGD

    with pytest.raises(ConfigError, match=r"suite.pgd.params.steps: 1000000000 is outside"):
        from_dict(PGD.Params, {"steps": 10**9}, "suite.pgd.params")


def test_a_plugin_declares_its_own_ranges():
    @dataclasses.dataclass(frozen=True)
    class Params:
        lam: float = 1.0
        RANGES = {"lam": "[0, 2]"}

    assert from_dict(Params, {"lam": 2}, "x").lam == 2
    with pytest.raises(ConfigError, match=r"x.lam: 3.0 is outside the valid range \[0, 2\]"):
        from_dict(Params, {"lam": 3}, "x")


@pytest.mark.parametrize("task", ["digits", "cifar10", "cifar100", "imagenet100", "reid_market", "voc_detection"])
def test_shipped_specs_and_suites_are_inside_their_ranges(task):
    reg = get_registry()
    spec = taskspec.load_task_spec(reg.entry("tasks", task).spec_path())
    for profile in spec.profiles:
        resolve(reg, task, "vanilla", profile=profile)
    for suite in reg.names("suites"):
        taskspec.load_suite_spec(reg.entry("suites", suite).spec_path())
