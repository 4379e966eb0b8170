"""Tests for natbench.config (strict YAML, typed schemas, include, numbers) and natbench.resolve
(--set overrides, hashing, run ids). No training, no data reading."""
from __future__ import annotations

import re

import pytest
import yaml

from natbench import config, resolve
from natbench.config import ConfigError, from_dict, load_with_include, load_yaml, parse_float
from natbench.errors import CompositionError, NatbenchError, UnknownNameError
from natbench.registry import get_registry
from natbench.taskspec import ProfileCfg, TaskSpec

REG = get_registry()


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------------------- load_yaml
def test_load_yaml_ok(tmp_path):
    p = write(tmp_path, "ok.yaml", "a: 1\nb: {c: [1, 2]}\n")
    assert load_yaml(p) == {"a": 1, "b": {"c": [1, 2]}}


def test_load_yaml_empty_file_is_empty_mapping(tmp_path):
    assert load_yaml(write(tmp_path, "empty.yaml", "")) == {}


def test_load_yaml_duplicate_key_top_level(tmp_path):
    p = write(tmp_path, "dup.yaml", "a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_yaml(p)
    msg = str(ei.value)
    assert "'a'" in msg and "duplicate" in msg
    assert f"{p}:3:" in msg


def test_load_yaml_duplicate_key_nested(tmp_path):
    p = write(tmp_path, "dup.yaml", "x:\n  y: 1\n  z: 2\n  y: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_yaml(p)
    msg = str(ei.value)
    assert "'y'" in msg and f"{p}:4:" in msg


def test_load_yaml_malformed(tmp_path):
    p = write(tmp_path, "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_yaml(p)
    m = re.match(rf"{re.escape(str(p))}:(\d+): malformed YAML", str(ei.value))
    assert m, str(ei.value)
    assert 2 <= int(m.group(1)) <= 4  # the unclosed flow list starts on line 2


def test_load_yaml_malformed_mapping_values(tmp_path):
    p = write(tmp_path, "bad.yaml", "a: 1\nb: c: d\n")
    with pytest.raises(ConfigError, match=rf"{p}:2: malformed YAML"):
        load_yaml(p)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "3\n"])
def test_load_yaml_top_level_not_mapping(tmp_path, text):
    p = write(tmp_path, "list.yaml", text)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(p)


def test_load_yaml_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "nope.yaml")


def test_load_yaml_is_safe(tmp_path):
    p = write(tmp_path, "evil.yaml", "a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):
        load_yaml(p)


def test_load_yaml_merge_key_override_is_not_a_duplicate(tmp_path):
    p = write(tmp_path, "merge.yaml", "base: &b {a: 1, c: 2}\nx:\n  <<: *b\n  a: 2\n")
    assert load_yaml(p)["x"] == {"a": 2, "c": 2}


def test_load_yaml_unhashable_key(tmp_path):
    p = write(tmp_path, "unh.yaml", "? [1, 2]\n: 3\n")
    with pytest.raises(ConfigError):
        load_yaml(p)


# ----------------------------------------------------------------------------------------- parse_float
@pytest.mark.parametrize(("value", "expected"), [
    ("8/255", 8 / 255), ("0.2", 0.2), (1, 1.0), (1.5e-3, 1.5e-3), (" 8 / 255 ", 8 / 255), ("1e-3", 1e-3),
    (0, 0.0), ("-0.5", -0.5),
])
def test_parse_float_ok(value, expected):
    out = parse_float(value, "w")
    assert isinstance(out, float)
    assert out == expected


@pytest.mark.parametrize("value", ["abc", True, False, "1/0", "nan", "inf", "-inf", "", None, [1], float("nan"),
                                   float("inf")])
def test_parse_float_rejects(value):
    with pytest.raises(ConfigError) as ei:
        parse_float(value, "where.key")
    assert "where.key" in str(ei.value)


@pytest.mark.parametrize("value", ["1e400", 10 ** 400], ids=["str-1e400", "int-10**400"])
def test_parse_float_overflow(value):
    with pytest.raises(ConfigError):
        parse_float(value, "w")


# ----------------------------------------------------------------------------------------- from_dict
def test_from_dict_unknown_nested_key():
    with pytest.raises(ConfigError) as ei:
        from_dict(TaskSpec, {"task": "t", "threat_model": {"epss": 0.1}}, "spec")
    msg = str(ei.value)
    assert "spec.threat_model" in msg
    assert "'epss'" in msg
    assert "Did you mean: eps" in msg


def test_from_dict_unknown_top_key():
    with pytest.raises(ConfigError, match=r"unknown key 'modle'.*Did you mean: model"):
        from_dict(TaskSpec, {"task": "t", "modle": {}}, "spec")


@pytest.mark.parametrize("data", [
    {"task": "t", "profiles": {"default": {"epochs": 1.5}}},  # int given float
    {"task": "t", "profiles": {"default": {"epochs": True}}},  # int given bool
    {"task": "t", "profiles": {"default": {"epochs": "3"}}},  # int given str
    {"task": "t", "model": {"mean": 0.5}},  # list given scalar
    {"task": "t", "profiles": {"default": {"milestones": 5}}},  # list given scalar
    {"task": "t", "model": {"arch": 3}},  # str given int
    {"task": "t", "threat_model": 0.1},  # mapping given scalar
    {"task": "t", "profiles": ["default"]},  # dict given list
    {"task": "t", "threat_model": {"eps": "big"}},  # float given garbage
])
def test_from_dict_wrong_types(data):
    with pytest.raises(ConfigError):
        from_dict(TaskSpec, data, "spec")


def test_from_dict_bool_given_string():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Flagged:
        on: bool = False

    assert from_dict(Flagged, {"on": True}, "f").on is True
    with pytest.raises(ConfigError, match=r"f\.on: expected true or false"):
        from_dict(Flagged, {"on": "yes"}, "f")
    with pytest.raises(ConfigError):
        from_dict(Flagged, {"on": 1}, "f")


def test_from_dict_eps_negative():
    with pytest.raises(ConfigError, match=r"eps.*>= 0"):
        from_dict(TaskSpec, {"task": "t", "threat_model": {"eps": -0.1}}, "spec")


def test_from_dict_eps_above_one():
    with pytest.raises(ConfigError, match="eps"):
        from_dict(TaskSpec, {"task": "t", "threat_model": {"eps": 8}}, "spec")


def test_from_dict_eps_fraction():
    spec = from_dict(TaskSpec, {"task": "t", "threat_model": {"eps": "8/255"}}, "spec")
    assert isinstance(spec.threat_model.eps, float)
    assert spec.threat_model.eps == 8 / 255


def test_from_dict_lists_become_tuples_and_ints_floats():
    spec = from_dict(TaskSpec, {"task": "t", "model": {"mean": [0, 0.5]},
                                "profiles": {"p": {"milestones": [3, 5], "lr": 1}}, "default_profile": "p"}, "s")
    assert spec.model.mean == (0.0, 0.5)
    assert spec.profiles["p"].milestones == (3, 5)
    assert spec.profiles["p"].lr == 1.0 and isinstance(spec.profiles["p"].lr, float)


def test_from_dict_missing_task_and_bad_default_profile():
    with pytest.raises(ConfigError, match="task"):
        from_dict(TaskSpec, {}, "spec")
    with pytest.raises(ConfigError, match="default_profile"):
        from_dict(TaskSpec, {"task": "t", "default_profile": "nope"}, "spec")


def test_from_dict_profile_validation():
    with pytest.raises(ConfigError):
        from_dict(ProfileCfg, {"epochs": 0}, "p")
    with pytest.raises(ConfigError):
        from_dict(ProfileCfg, {"optimizer": "sgdd"}, "p")


# ----------------------------------------------------------------------------------------- include
BASE = """\
task: base
description: the base
threat_model:
  eps: 0.2
  train_steps: 10
profiles:
  default:
    epochs: 15
    lr: 0.05
"""


def test_include_deep_merges(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    v = write(tmp_path, "variant.yaml", "include: base.yaml\ntask: variant\nthreat_model: {eps: 8/255}\n"
                                         "profiles: {default: {epochs: 3}}\n")
    data = load_with_include(v)
    assert "include" not in data
    assert data["task"] == "variant"
    assert data["description"] == "the base"
    assert data["threat_model"] == {"eps": "8/255", "train_steps": 10}
    assert data["profiles"] == {"default": {"epochs": 3, "lr": 0.05}}
    spec = from_dict(TaskSpec, data, v.name)
    assert spec.threat_model.eps == 8 / 255
    assert spec.profiles["default"].epochs == 3 and spec.profiles["default"].lr == 0.05


def test_include_absolute_path(tmp_path):
    base = write(tmp_path, "base.yaml", BASE)
    sub = tmp_path / "sub"
    sub.mkdir()
    v = write(sub, "variant.yaml", f"include: {base}\ntask: v\n")
    assert load_with_include(v)["description"] == "the base"


def test_include_does_not_mutate_base(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    v = write(tmp_path, "variant.yaml", "include: base.yaml\nprofiles: {default: {epochs: 3}}\n")
    load_with_include(v)
    assert load_yaml(tmp_path / "base.yaml")["profiles"]["default"]["epochs"] == 15


def test_include_nested_is_rejected(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "mid.yaml", "include: base.yaml\ntask: mid\n")
    v = write(tmp_path, "top.yaml", "include: mid.yaml\ntask: top\n")
    with pytest.raises(ConfigError, match="one level"):
        load_with_include(v)


def test_include_missing_file(tmp_path):
    v = write(tmp_path, "variant.yaml", "include: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_with_include(v)


@pytest.mark.parametrize("value", ["3", "[a.yaml]"])
def test_include_not_a_string(tmp_path, value):
    v = write(tmp_path, "variant.yaml", f"include: {value}\n")
    with pytest.raises(ConfigError):
        load_with_include(v)


# ----------------------------------------------------------------------------------------- parse_set
def test_parse_set():
    assert config.parse_set(["a.b=3", "nat.omega=8/255", "x.y=true", "x.z=[1, 2]", "k.v=a=b"]) == [
        (["a", "b"], 3), (["nat", "omega"], "8/255"), (["x", "y"], True), (["x", "z"], [1, 2]), (["k", "v"], "a=b")]


@pytest.mark.parametrize("item", ["epochs3", "=3", "a..b=3", ".a=1", "a.=1", ""])
def test_parse_set_malformed(item):
    with pytest.raises(ConfigError, match="key.path=value"):
        config.parse_set([item])


# ----------------------------------------------------------------------------------------- resolve
@pytest.fixture(scope="module")
def base():
    return resolve.resolve(REG, "digits", "trades")


def r_(*sets, defense="trades", **kw):
    return resolve.resolve(REG, "digits", defense, sets=list(sets), **kw)


def test_resolve_defaults(base):
    assert base.task == "digits"
    assert base.defense == "trades"
    assert base.profile_name == "default"
    assert base.seed == 0
    assert base.config["defense"]["canonical"] == "trades"
    assert "profiles" not in base.config["task"]


def test_resolve_training_override(base):
    r = r_("training.epochs=3")
    assert r.profile.epochs == 3
    assert r.config["training"]["epochs"] == 3
    assert r.config_hash != base.config_hash


def test_resolve_component_param_override(base):
    r = r_("trades.beta=3")
    assert r.params["trades"].beta == 3.0
    assert r.config["defense"]["params"]["trades"]["beta"] == 3.0
    assert r.config_hash != base.config_hash


def test_resolve_nat_param_override():
    r = r_("nat.omega=0.06", defense="trades+nat")
    assert r.params["nat"].omega == 0.06
    assert r.defense == "trades+nat"


def test_resolve_eps_fraction(base):
    r = r_("threat_model.eps=8/255")
    eps = r.config["task"]["threat_model"]["eps"]
    assert isinstance(eps, float) and eps == 8 / 255
    assert r.spec.threat_model.eps == 8 / 255
    assert r.config_hash != base.config_hash


def test_resolve_long_task_path_equals_shorthand():
    assert r_("task.threat_model.eps=0.1").config_hash == r_("threat_model.eps=0.1").config_hash


def test_resolve_eps_fraction_and_decimal_hash_equal():
    assert r_("threat_model.eps=1/5").config_hash == r_("threat_model.eps=0.2").config_hash


@pytest.mark.parametrize(("item", "needle"), [
    ("training.epoch=3", "Did you mean: epochs"),
    ("trainig.epochs=3", "trainig"),
    ("trades.betta=1", "betta"),
    ("nat.omega=0.06", "nat"),
    ("epochs3", "key.path=value"),
    ("threat_model.eps=-0.1", "eps"),
    ("threat_model.eps=abc", "eps"),
    ("threat_model.epss=0.1", "Did you mean: eps"),
    ("training=3", "training"),
    ("training.epochs=0", "epochs"),
    ("training.epochs=1.5", "epochs"),
    ("model.mean=0.5", "mean"),
    ("task.profiles.default.epochs=3", "profiles"),
])
def test_resolve_bad_overrides(item, needle):
    with pytest.raises(ConfigError) as ei:
        r_(item)
    assert needle in str(ei.value)


def test_resolve_component_param_error_names_component():
    with pytest.raises(ConfigError, match=r"trades.*betta.*Did you mean: beta"):
        r_("trades.betta=1")


def test_resolve_component_not_in_composition():
    with pytest.raises(ConfigError, match="nat is not part of --defense trades"):
        r_("nat.omega=0.06", defense="trades")


def test_resolve_hash_stable(base):
    again = resolve.resolve(REG, "digits", "trades")
    assert again.config_hash == base.config_hash
    assert again.run_id == base.run_id
    assert again.config == base.config
    assert r_("training.epochs=3", "trades.beta=3").config_hash == r_("trades.beta=3", "training.epochs=3").config_hash


def test_resolve_hash_changes_with_every_kind_of_change(base):
    hashes = {base.config_hash}
    variants = [
        r_("training.epochs=3"), r_("training.lr=0.01"), r_("trades.beta=1"), r_("threat_model.eps=8/255"),
        r_("model.width=16"), r_("data.split_seed=1"), r_("selection.steps=3"), r_(seed=1), r_(profile="quick"),
        r_(defense="pgd-at"),
    ]
    for v in variants:
        hashes.add(v.config_hash)
    assert len(hashes) == len(variants) + 1
    # The suite says what to evaluate, not what to train: same provenance hash, same run.
    assert r_(suite="smoke").config_hash == base.config_hash
    assert r_(suite="smoke").config["suite"]["suite"] == "smoke"


def test_resolve_run_id(base):
    assert base.run_id.startswith("digits-trades-s0-")
    r = resolve.resolve(REG, "digits", "nat+pgd-at", seed=3)
    assert "digits" in r.run_id and "pgd-at+nat" in r.run_id and "s3" in r.run_id
    assert r.run_id == f"digits-pgd-at+nat-s3-{r.config_hash[:8]}"
    assert r.defense == "pgd-at+nat"


def test_resolve_profile_and_suite():
    r = resolve.resolve(REG, "digits", "vanilla", profile="quick", suite="smoke")
    assert r.profile_name == "quick" and r.profile.epochs == 3
    assert r.suite.suite == "smoke"
    with pytest.raises(ConfigError, match="Did you mean: quick"):
        resolve.resolve(REG, "digits", "vanilla", profile="quik")
    with pytest.raises(UnknownNameError, match="Did you mean: smoke"):
        resolve.resolve(REG, "digits", "vanilla", suite="smok")


def test_resolve_bad_names_and_seed():
    with pytest.raises(UnknownNameError, match="Did you mean: digits"):
        resolve.resolve(REG, "digitz", "vanilla")
    with pytest.raises(CompositionError, match="Did you mean: trades"):
        resolve.resolve(REG, "digits", "trade")
    with pytest.raises(ConfigError, match="seed"):
        resolve.resolve(REG, "digits", "vanilla", seed=-1)


def test_resolve_round_trips_through_saved_config(base):
    saved = yaml.safe_load(yaml.safe_dump(base.config, sort_keys=False))
    again = resolve.from_run_config(REG, saved)
    assert again.config_hash == base.config_hash
    assert again.run_id == base.run_id


def test_resolve_task_file_with_duplicate_key(tmp_path):
    spec = load_yaml(REG.entry("tasks", "digits").spec_path())
    text = yaml.safe_dump(spec, sort_keys=False) + "task: digits\n"
    p = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match="duplicate key 'task'"):
        resolve.resolve(REG, str(p), "vanilla")


def test_resolve_task_file_variant(tmp_path):
    base_path = REG.entry("tasks", "digits").spec_path()
    p = write(tmp_path, "digits_small.yaml", f"include: {base_path}\ntask: digits-small\nmodel: {{width: 8}}\n")
    r = resolve.resolve(REG, str(p), "vanilla")
    assert r.task == "digits-small" and r.spec.model.width == 8
    assert r.run_id.startswith("digits-small-vanilla-s0-")


def test_resolve_task_file_unknown_key(tmp_path):
    p = write(tmp_path, "t.yaml", "task: t\nthreat_model: {epss: 0.1}\n")
    with pytest.raises(ConfigError, match=r"t\.yaml\.threat_model.*Did you mean: eps"):
        resolve.resolve(REG, str(p), "vanilla")


def test_resolve_errors_are_user_errors():
    for call in (lambda: r_("trainig.epochs=3"), lambda: r_("epochs3"), lambda: resolve.resolve(REG, "x", "vanilla")):
        with pytest.raises(NatbenchError) as ei:
            call()
        assert ei.value.exit_code == 2


def test_resolve_eps_overflow():
    with pytest.raises(ConfigError):
        r_("threat_model.eps=1e400")


def test_resolve_set_task_suite_is_honoured_or_rejected():
    try:
        r = r_("task.suite=smoke")
    except ConfigError:
        return
    assert r.suite.suite == r.config["task"]["suite"] == "smoke"


def test_resolve_set_default_profile_is_honoured_or_rejected():
    try:
        r = r_("task.default_profile=quick")
    except ConfigError:
        return
    assert r.profile_name == "quick"


def test_resolve_set_task_kind_is_rejected():
    with pytest.raises(NatbenchError):
        r_("task.kind=reid")


def test_task_defense_params_with_unknown_component(tmp_path):
    spec = load_yaml(REG.entry("tasks", "digits").spec_path())
    spec["defense_params"] = {"trdes": {"beta": 3.0}}
    p = write(tmp_path, "dp.yaml", yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(NatbenchError):
        resolve.resolve(REG, str(p), "trades")


def test_task_defense_params_apply(tmp_path):
    spec = load_yaml(REG.entry("tasks", "digits").spec_path())
    spec["defense_params"] = {"trades": {"beta": 3.0}, "nat": {"omega": 0.06}}
    p = write(tmp_path, "dp.yaml", yaml.safe_dump(spec, sort_keys=False))
    r = resolve.resolve(REG, str(p), "trades")
    assert r.params["trades"].beta == 3.0
    r = resolve.resolve(REG, str(p), "trades+nat", sets=["nat.omega=0.1"])
    assert r.params["nat"].omega == 0.1 and r.params["trades"].beta == 3.0
    spec["defense_params"] = {"trades": {"betta": 3.0}}
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(ConfigError, match="betta"):
        resolve.resolve(REG, str(p), "trades")
