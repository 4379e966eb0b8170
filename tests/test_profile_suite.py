"""A profile can name its default suite (``ProfileCfg.suite``): cifar10's quick profile evaluates ``smoke``
unless --suite asks for more; the provenance hash (run id) does not depend on it."""
from __future__ import annotations

import pytest
import yaml

from natbench.errors import NatbenchError
from natbench.registry import get_registry
from natbench.resolve import resolve


def test_quick_profile_names_its_suite_and_suite_option_wins():
    reg = get_registry()
    r = resolve(reg, "cifar10", "vanilla", profile="quick")
    assert r.suite.suite == "smoke" and r.config["suite"]["suite"] == "smoke"  # stored with the run
    assert resolve(reg, "cifar10", "vanilla", profile="quick", suite="paper-whitebox").suite.suite == "paper-whitebox"
    assert resolve(reg, "cifar10", "vanilla", profile="paper").suite.suite == "paper-whitebox"  # the task's


def test_profile_suite_is_not_part_of_the_run_id(tmp_path):
    reg = get_registry()
    base = resolve(reg, "digits", "vanilla", profile="quick")
    spec = tmp_path / "digits-light.yaml"
    spec.write_text(yaml.safe_dump({"include": "digits", "profiles": {"quick": {"suite": "smoke", "epochs": 3,
                                                                                  "batch_size": 64, "eval_batch_size": 360}}}))
    light = resolve(reg, str(spec), "vanilla", profile="quick")
    assert light.suite.suite == "smoke" and base.suite.suite == "digits"
    assert light.config_hash == base.config_hash


def test_unknown_profile_suite_is_a_user_error(tmp_path):
    spec = tmp_path / "digits-bad.yaml"
    spec.write_text(yaml.safe_dump({"include": "digits", "profiles": {"quick": {"suite": "smok"}}}))
    with pytest.raises(NatbenchError, match="smok"):
        resolve(get_registry(), str(spec), "vanilla", profile="quick")
