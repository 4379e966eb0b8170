"""Threat-model norms at resolve time (issue 16): per-norm defaults of a task spec, the norm check of a
suite's attacks and of a defense's training attack, and the L-inf identities left unchanged."""
from __future__ import annotations

import pytest

from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.resolve import resolve

REG = get_registry()


def test_norm_l2_takes_the_specs_l2_defaults_and_suite():
    r = resolve(REG, "digits", "trades+nat", sets=["threat_model.norm=l2"])
    tm = r.spec.threat_model
    assert (tm.norm, tm.eps, tm.train_steps, tm.train_step_size) == ("l2", 0.75, 10, 0.1875)
    assert r.suite.suite == "digits-l2" and "threat_model.norm=l2" in r.variant
    assert "threat_models" not in r.config["task"]  # per-norm defaults are not part of a run
    explicit = resolve(REG, "digits", "trades+nat", sets=["threat_model.norm=l2", "threat_model.eps=1.5"])
    assert explicit.spec.threat_model.eps == 1.5 and explicit.spec.threat_model.train_step_size == 0.1875
    assert explicit.run_id != r.run_id
    assert resolve(REG, "digits", "pgd-at", sets=["threat_model.norm=l2"], suite="smoke").suite.suite == "smoke"  # --suite wins
    c = resolve(REG, "cifar10", "pgd-at", sets=["threat_model.norm=l2"])
    assert (c.spec.threat_model.eps, c.suite.suite) == (0.5, "whitebox-l2")
    i = resolve(REG, "imagenet100", "pgd-at", sets=["threat_model.norm=l2"])
    assert (i.spec.threat_model.eps, i.spec.threat_model.train_step_size) == (3.0, 0.75)  # RobustBench ImageNet L2


def test_linf_runs_keep_their_identity():
    """The new spec section is not part of the config: an L-inf run id is what it was (tests/test_resolve.py
    pins them all; this is the one-line version of it)."""
    r = resolve(REG, "digits", "vanilla")
    assert "threat_models" not in r.config["task"] and r.spec.threat_model.norm == "linf"
    assert resolve(REG, "digits", "vanilla", sets=["threat_model.norm=linf"]).run_id == r.run_id


@pytest.mark.parametrize("defense,sets,suite,match", [
    ("pgd-at", ["threat_model.norm=l2"], "digits", r"suite.cw-inf: attack 'cw-inf' supports the norms linf, not .*'l2'"),
    ("pgd-at", ["threat_model.norm=l1"], None, "L1 adversarial training has no reference recipe in natbench"),
    ("trades", ["threat_model.norm=l1"], None, "natbench eval RUN --threat-model l1:EPS"),
    ("fast-at", ["threat_model.norm=l2"], None, "fast-at's training attack supports the norms linf, not 'l2'"),
    ("nuat+ema", ["threat_model.norm=l2"], None, "nuat's training attack"),
    ("vanilla", ["threat_model.norm=l1", "threat_model.eps=5"], None, "suite.fgsm: attack 'fgsm' supports the norms linf, l2, not .*'l1'"),
    ("vanilla", ["threat_model.norm=l2", "threat_model.eps=20000"], None, "exceeds 10000"),
    ("vanilla", ["threat_model.norm=l1"], "smoke", "states no l1 defaults .* give one, e.g. --set threat_model.eps"),
])
def test_a_norm_nothing_supports_is_one_config_error(defense, sets, suite, match):
    with pytest.raises(ConfigError, match=match):
        resolve(REG, "digits", defense, sets=sets, suite=suite)
