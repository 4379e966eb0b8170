"""Tests for natbench.compose: the "base+reg+pert" grammar, canonical names and the static checks.

Rules that the built-in registry cannot exercise (two regularizers, two perturbations, unmet
capabilities or cache needs) use fake plugin classes defined here, in a hand-built Registry.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from natbench import compose
from natbench.config import ConfigError, to_dict
from natbench.contracts import KINDS
from natbench.errors import CompositionError, NatbenchError
from natbench.registry import Entry, Registry, get_registry

REG = get_registry()
CAPS = frozenset({"logits"})


def plan(spec: str, reg: Registry = REG, caps: frozenset[str] = CAPS, kind: str | None = "classification"):
    return compose.plan(spec, reg, caps, kind)


# ------------------------------------------------------------------------------- built-in registry
@pytest.mark.parametrize(("spec", "canonical"), [
    ("vanilla", "vanilla"),
    ("pgd-at", "pgd-at"),
    ("trades", "trades"),
    ("nat", "pgd-at+nat"),  # alias: the paper's recipe on its default base
    ("nat+pgd-at", "pgd-at+nat"),
    ("pgd-at+nat", "pgd-at+nat"),
    ("trades+nat", "trades+nat"),
    ("nat+trades", "trades+nat"),
    ("vanilla+nat", "vanilla+nat"),
    (" pgd-at + nat ", "pgd-at+nat"),
])
def test_canonical(spec, canonical):
    p = plan(spec)
    assert p.canonical == canonical
    assert p.spec == spec
    assert p.base.kind == "defenses"
    assert "+".join(c.name for c in p.components) == canonical


def test_nat_alias_structure():
    p = plan("nat")
    assert p.base.name == "pgd-at"
    assert [r.name for r in p.regularizers] == ["nat"]
    assert p.perturbation is None
    assert p.base.cls is REG.load("defenses", "pgd-at")
    assert p.regularizers[0].cls is REG.load("regularizers", "nat")


def test_alias_only_when_alone():
    # inside a composition "nat" is the regularizer, not its alias
    assert plan("trades+nat").base.name == "trades"


def test_two_bases():
    with pytest.raises(CompositionError) as ei:
        plan("pgd-at+trades")
    msg = str(ei.value)
    assert "pgd-at" in msg and "trades" in msg and "exactly one" in msg


def test_two_bases_with_regularizer_suggests_a_fix():
    with pytest.raises(CompositionError, match=r"exactly one.*pgd-at\+nat"):
        plan("pgd-at+trades+nat")


@pytest.mark.parametrize("spec", ["nat+nat", "pgd-at+pgd-at", "trades+nat+nat"])
def test_duplicate_component(spec):
    dup = "nat" if "nat+nat" in spec else "pgd-at"
    with pytest.raises(CompositionError, match=rf"{dup} appears twice"):
        plan(spec)


@pytest.mark.parametrize("spec", ["", "   ", "pgd-at+", "+nat", "pgd-at++nat", "+"])
def test_empty_component(spec):
    with pytest.raises(CompositionError, match="empty component"):
        plan(spec)


def test_unknown_component_did_you_mean():
    with pytest.raises(CompositionError) as ei:
        plan("pgd-at+natt")
    msg = str(ei.value)
    assert "'natt'" in msg and "Did you mean: nat" in msg and "Available:" in msg


def test_unknown_single_defense_did_you_mean():
    with pytest.raises(CompositionError, match=r"Unknown defense 'trade'\. Did you mean: trades\?"):
        plan("trade")


def test_composition_errors_are_user_errors():
    with pytest.raises(NatbenchError) as ei:
        plan("pgd-at+trades")
    assert ei.value.exit_code == 2


def test_builtin_needs_logits():
    with pytest.raises(CompositionError, match=r"needs task capabilities \['logits'\]"):
        plan("vanilla", caps=frozenset())


def test_default_params_overlay():
    p = plan("trades+nat")
    params = p.default_params({"trades": {"beta": 3.0}, "pgd-at": {"steps": 1}})
    assert set(params) == {"trades", "nat"}
    assert params["trades"]["beta"] == 3.0
    assert params["nat"] == to_dict(REG.load("regularizers", "nat").Params())
    assert {k: v for k, v in params["trades"].items() if k != "beta"} == {
        k: v for k, v in to_dict(REG.load("defenses", "trades").Params()).items() if k != "beta"}


def test_check_params_ok():
    p = plan("trades+nat")
    out = compose.check_params(p, {"trades": {"beta": "3"}, "nat": {"omega": "6/100"}})
    assert out["trades"].beta == 3.0
    assert out["nat"].omega == pytest.approx(0.06)
    assert isinstance(out["nat"], REG.load("regularizers", "nat").Params)


def test_check_params_defaults_for_missing_components():
    p = plan("trades+nat")
    out = compose.check_params(p, {})
    assert out["trades"] == REG.load("defenses", "trades").Params()


@pytest.mark.parametrize(("spec", "params", "component", "key"), [
    ("trades", {"trades": {"betta": 1}}, "trades", "betta"),
    ("trades+nat", {"nat": {"omegaa": 1}}, "nat", "omegaa"),
    ("pgd-at", {"pgd-at": {"stepz": 3}}, "pgd-at", "stepz"),
])
def test_check_params_rejects_unknown(spec, params, component, key):
    with pytest.raises(ConfigError) as ei:
        compose.check_params(plan(spec), params)
    msg = str(ei.value)
    assert component in msg and key in msg


def test_check_params_rejects_bad_type():
    with pytest.raises(ConfigError, match="trades"):
        compose.check_params(plan("trades"), {"trades": {"beta": "lots"}})


# ------------------------------------------------------------------------------- fake plugins
class _Plugin:
    requires: frozenset[str] = frozenset()

    @dataclass(frozen=True)
    class Params:
        weight: float = 1.0  # a weight

    def __init__(self, params=None):
        self.params = params or self.Params()


class FakeBase(_Plugin):
    """A fake base defense that provides x_adv."""

    name = "fbase"
    requires = frozenset({"logits"})
    provides = frozenset({"x_adv", "logits_adv"})
    ce_on = frozenset({"adv"})
    select_on = "robust"


class FakeCleanBase(_Plugin):
    """A fake base defense that provides nothing adversarial."""

    name = "fclean"
    provides = frozenset({"logits_clean"})
    ce_on = frozenset({"clean"})
    select_on = "clean"


class FakeRegA(_Plugin):
    """A fake regularizer with no cache needs."""

    name = "rega"
    needs_cache: frozenset[str] = frozenset()


class FakeRegB(_Plugin):
    """A fake regularizer that needs adversarial examples from the base."""

    name = "regb"
    needs_cache = frozenset({"x_adv"})


class FakeRegEmbed(_Plugin):
    """A fake regularizer that needs an embedding capability."""

    name = "regemb"
    requires = frozenset({"logits", "embedding"})
    needs_cache: frozenset[str] = frozenset()


class FakePertA(_Plugin):
    """A fake weight perturbation."""

    name = "perta"


class FakePertB(_Plugin):
    """Another fake weight perturbation."""

    name = "pertb"


def _entry(kind: str, name: str, cls: type, **kw) -> Entry:
    return Entry(kind=kind, name=name, cite="test fake", target=f"{__name__}:{cls.__name__}", **kw)


@pytest.fixture(scope="module")
def fake() -> Registry:
    entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
    entries["defenses"] = {
        "fbase": _entry("defenses", "fbase", FakeBase),
        "fclean": _entry("defenses", "fclean", FakeCleanBase),
        "reidonly": _entry("defenses", "reidonly", FakeBase, tasks=("reid",)),
    }
    entries["regularizers"] = {
        "rega": _entry("regularizers", "rega", FakeRegA),
        "regb": _entry("regularizers", "regb", FakeRegB),
        "regemb": _entry("regularizers", "regemb", FakeRegEmbed),
        "aliased": _entry("regularizers", "aliased", FakeRegA, alias="fbase+aliased"),
    }
    entries["perturbations"] = {
        "perta": _entry("perturbations", "perta", FakePertA),
        "pertb": _entry("perturbations", "pertb", FakePertB),
    }
    return Registry(entries)


def test_fake_full_composition_canonical(fake):
    p = plan("perta+regb+fbase+rega", fake)
    assert p.canonical == "fbase+rega+regb+perta"
    assert [r.name for r in p.regularizers] == ["rega", "regb"]
    assert p.perturbation is not None and p.perturbation.name == "perta"
    assert p.perturbation.cls is FakePertA
    assert [c.name for c in p.components] == ["fbase", "rega", "regb", "perta"]


def test_fake_alias_expands(fake):
    p = plan("aliased", fake)
    assert p.canonical == "fbase+aliased"


def test_regularizers_without_base(fake):
    with pytest.raises(CompositionError) as ei:
        plan("rega+regb", fake)
    msg = str(ei.value)
    assert "rega is a regularizer; add a base defense, e.g. pgd-at+" in msg
    assert "regb" in msg


def test_single_regularizer_without_alias(fake):
    with pytest.raises(CompositionError, match=r"rega is a regularizer; add a base defense, e\.g\. pgd-at\+rega"):
        plan("rega", fake)


def test_perturbation_without_base(fake):
    with pytest.raises(CompositionError, match=r"perta is a weight perturbation; add a base defense"):
        plan("perta", fake)


def test_at_most_one_perturbation(fake):
    with pytest.raises(CompositionError) as ei:
        plan("fbase+perta+pertb", fake)
    msg = str(ei.value)
    assert "at most one weight perturbation" in msg and "perta" in msg and "pertb" in msg


def test_needs_task_capabilities(fake):
    with pytest.raises(CompositionError) as ei:
        plan("fbase", fake, caps=frozenset())
    msg = str(ei.value)
    assert "fbase needs task capabilities ['logits']" in msg


def test_regularizer_needs_capability_the_task_lacks(fake):
    with pytest.raises(CompositionError, match=r"regemb needs task capabilities \['embedding'\]"):
        plan("fbase+regemb", fake)
    assert plan("fbase+regemb", fake, caps=frozenset({"logits", "embedding"})).canonical == "fbase+regemb"


def test_needs_cache_not_provided(fake):
    with pytest.raises(CompositionError) as ei:
        plan("fclean+regb", fake)
    msg = str(ei.value)
    assert "regb needs ['x_adv']" in msg and "fclean does not provide" in msg
    assert plan("fbase+regb", fake).canonical == "fbase+regb"


def test_task_kind_restriction(fake):
    with pytest.raises(CompositionError, match=r"reidonly supports task kinds reid, not classification"):
        plan("reidonly", fake)
    assert plan("reidonly", fake, kind="reid").canonical == "reidonly"
    assert plan("reidonly", fake, kind=None).canonical == "reidonly"


def test_fake_check_params(fake):
    p = plan("fbase+rega", fake)
    out = compose.check_params(p, {"rega": {"weight": "1/2"}})
    assert out["rega"].weight == 0.5 and out["fbase"].weight == 1.0
    with pytest.raises(ConfigError, match=r"rega.*wieght.*Did you mean: weight"):
        compose.check_params(p, {"rega": {"wieght": 1}})
