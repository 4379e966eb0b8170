"""Tests for natbench.registry: contract checks over every entry, plugin files <-> registry,
did-you-mean errors, entry points, and strict registry files. No training."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import natbench.registry as registry_mod
from natbench.contract_check import problems
from natbench.errors import ConfigError, UnknownNameError
from natbench.registry import CODE_KINDS, PACKAGE_DIR, SPEC_KINDS, SPECS_DIR, Registry, get_registry, load_target

REG = get_registry()
ALL_ENTRIES = [(kind, name) for kind in REG.kinds() for name in REG.names(kind)]
PLUGIN_DIRS = ("defenses", "regularizers", "perturbations", "averagers", "attacks", "tasks")


# ------------------------------------------------------------------------------- contract checks
@pytest.mark.parametrize(("kind", "name"), ALL_ENTRIES, ids=[f"{k}/{n}" for k, n in ALL_ENTRIES])
def test_entry_honours_its_contract(kind, name):
    entry = REG.entry(kind, name)
    assert problems(entry, REG) == []


def test_registry_is_not_empty():
    for kind in ("task_kinds", "tasks", "defenses", "regularizers", "attacks", "suites"):
        assert REG.names(kind), f"no built-in {kind}"


# ------------------------------------------------------------------------------- files <-> registry
def _plugin_modules() -> list[str]:
    mods = []
    for d in PLUGIN_DIRS:
        for f in sorted((PACKAGE_DIR / d).glob("*.py")):
            if f.name == "__init__.py" or f.name.startswith("_"):
                continue
            mods.append(f"natbench.{d}.{f.stem}")
    return mods


def _target_modules(reg: Registry) -> set[str]:
    return {e.target.partition(":")[0] for k in CODE_KINDS for e in reg.entries(k) if e.target}


PLUGIN_MODULES = _plugin_modules()


def test_plugin_files_found():
    assert "natbench.defenses.trades" in PLUGIN_MODULES
    assert "natbench.regularizers.nat" in PLUGIN_MODULES


@pytest.mark.parametrize("module", PLUGIN_MODULES)
def test_every_plugin_file_is_registered(module):
    assert module in _target_modules(REG), (
        f"{module} is a plugin file but no entry of natbench/registry.yaml targets it; register it "
        "(or prefix the file with '_' if it is a helper)"
    )


CODE_ENTRIES = [(k, n) for k in CODE_KINDS for n in REG.names(k)]


@pytest.mark.parametrize(("kind", "name"), CODE_ENTRIES, ids=[f"{k}/{n}" for k, n in CODE_ENTRIES])
def test_every_target_resolves(kind, name):
    entry = REG.entry(kind, name)
    assert entry.target and ":" in entry.target, f"{kind}/{name}: target {entry.target!r} is not 'module:attr'"
    module, _, attr = entry.target.partition(":")
    mod = importlib.import_module(module)
    obj = mod
    for part in attr.split("."):
        assert hasattr(obj, part), f"{entry.target}: {part} not found"
        obj = getattr(obj, part)
    assert load_target(entry.target) is obj
    assert REG.load(kind, name) is obj


def test_every_spec_file_is_referenced():
    referenced = {REG.entry(k, n).spec_path().resolve() for k in SPEC_KINDS for n in REG.names(k)}
    files = sorted(p.resolve() for p in SPECS_DIR.rglob("*.y*ml"))
    assert files, "no spec files found under natbench/specs"
    unreferenced = [str(p.relative_to(SPECS_DIR.resolve())) for p in files if p not in referenced]
    assert unreferenced == [], f"spec files not referenced by registry.yaml: {unreferenced}"
    for p in referenced:
        assert p.is_file(), f"registry references a missing spec {p}"


def test_spec_entries_have_no_target_and_code_entries_no_spec():
    for k in SPEC_KINDS:
        for e in REG.entries(k):
            assert e.spec and not e.target, e
    for k in CODE_KINDS:
        for e in REG.entries(k):
            if e.source == "builtin":
                assert e.target and not e.spec, e


# ------------------------------------------------------------------------------- unknown names
def _assert_unknown(kind: str, word: str, typo: str, expected: str) -> None:
    with pytest.raises(UnknownNameError) as ei:
        REG.entry(kind, typo)
    msg = str(ei.value)
    available = ", ".join(REG.names(kind))
    pattern = (rf"Unknown {word} '{re.escape(typo)}'\. Did you mean: {re.escape(expected)}(, [\w.+-]+)*\? "
               rf"Available: {re.escape(available)}")
    assert re.fullmatch(pattern, msg), msg


def test_unknown_defense_message():
    _assert_unknown("defenses", "defense", "trade", "trades")


def test_unknown_defense_exact_builtin_message():
    with pytest.raises(UnknownNameError) as ei:
        REG.entry("defenses", "trade")
    assert str(ei.value).startswith("Unknown defense 'trade'. Did you mean: trades? Available: ")


def test_unknown_attack_message():
    _assert_unknown("attacks", "attack", "pgdd", "pgd")


def test_unknown_task_and_suite_messages():
    _assert_unknown("tasks", "task", "digitz", "digits")
    _assert_unknown("suites", "suite", "smok", "smoke")


def test_unknown_without_close_match_lists_available():
    with pytest.raises(UnknownNameError) as ei:
        REG.entry("defenses", "zzzzzz")
    msg = str(ei.value)
    assert "Did you mean" not in msg
    assert msg == f"Unknown defense 'zzzzzz'. Available: {', '.join(REG.names('defenses'))}"


def test_unknown_name_is_a_user_error():
    with pytest.raises(UnknownNameError) as ei:
        REG.load("attacks", "nope")
    assert ei.value.exit_code == 2


# ------------------------------------------------------------------------------- entry points
class ThirdPartyDefense:
    """A fake third-party defense (entry-point test only). Cites nothing: it never trains."""

    name = "fancy"
    requires = frozenset({"logits"})
    provides = frozenset({"logits_clean"})
    ce_on = frozenset({"clean"})
    select_on = "clean"

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params=None):
        self.params = params or self.Params()

    def prepare(self, model, batch, task, cache, generator):  # pragma: no cover - never trains
        pass

    def loss(self, model, batch, task, cache):  # pragma: no cover - never trains
        raise NotImplementedError


def _fake_entry_points(eps: list[importlib.metadata.EntryPoint]):
    def entry_points(*, group=None, **kw):
        return [ep for ep in eps if group is None or ep.group == group]

    return entry_points


def test_entry_point_plugin_is_listed(monkeypatch):
    target = f"{__name__}:ThirdPartyDefense"
    ep = importlib.metadata.EntryPoint(name="fancy", value=target, group="natbench.defenses")
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points([ep]))
    reg = Registry.from_file()
    assert "fancy" in reg.names("defenses")
    e = reg.entry("defenses", "fancy")
    assert e.source.startswith("entry point ")
    assert e.source == "entry point natbench.defenses"
    assert e.target == target and e.spec is None
    assert reg.load("defenses", "fancy") is ThirdPartyDefense
    assert problems(e, reg) == []
    # built-ins are still there
    assert reg.entry("defenses", "trades").source == "builtin"


def test_entry_point_task_spec_is_a_spec(monkeypatch, tmp_path):
    spec = tmp_path / "mytask.yaml"
    spec.write_text("task: mytask\n")
    ep = importlib.metadata.EntryPoint(name="mytask", value=str(spec), group="natbench.tasks")
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points([ep]))
    reg = Registry.from_file()
    e = reg.entry("tasks", "mytask")
    assert e.spec == str(spec) and e.target is None
    assert e.spec_path() == spec
    assert e.source == "entry point natbench.tasks"


def test_entry_point_with_a_builtin_name_is_refused_naming_both(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="trades", value=f"{__name__}:ThirdPartyDefense",
                                       group="natbench.defenses")
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points([ep]))
    with pytest.raises(ConfigError) as ei:
        Registry.from_file()
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.exit_code == 2
    assert f"{__name__}:ThirdPartyDefense" in msg and "natbench.defenses.trades:TRADES" in msg and "rename" in msg


def test_two_plugins_with_one_name_are_refused(monkeypatch):
    eps = [importlib.metadata.EntryPoint(name="fancy", value=f"{__name__}:ThirdPartyDefense", group="natbench.defenses"),
           importlib.metadata.EntryPoint(name="fancy", value=f"{__name__}:CitedDefense", group="natbench.defenses")]
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points(eps))
    with pytest.raises(ConfigError, match="ThirdPartyDefense.*CitedDefense|CitedDefense.*ThirdPartyDefense"):
        Registry.from_file()


def test_the_same_plugin_seen_twice_is_one_entry(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="fancy", value=f"{__name__}:ThirdPartyDefense", group="natbench.defenses")
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points([ep, ep]))
    assert Registry.from_file().entry("defenses", "fancy").target == ep.value


def test_plugin_that_fails_to_import_is_a_user_error(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="broken", value="natbench_no_such_plugin_module:Defense",
                                       group="natbench.defenses")
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points([ep]))
    reg = Registry.from_file()
    with pytest.raises(ConfigError) as ei:
        reg.load("defenses", "broken")
    msg = str(ei.value)
    assert "\n" not in msg and "broken" in msg and "natbench_no_such_plugin_module" in msg and "failed to import" in msg


class CitedDefense(ThirdPartyDefense):
    """A fake third-party defense that declares its citation and task kinds (entry-point test only)."""

    name = "cited"
    cite = "Doe et al., A Defense, 2031"
    task_kinds = ("reid",)


def test_plugin_class_attributes_give_cite_and_task_kinds(monkeypatch):
    from natbench import compose
    from natbench.errors import CompositionError

    ep = importlib.metadata.EntryPoint(name="cited", value=f"{__name__}:CitedDefense", group="natbench.defenses")
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points([ep]))
    reg = Registry.from_file()
    assert reg.entry("defenses", "cited").cite.startswith("third-party plugin")  # nothing imported yet
    assert reg.load("defenses", "cited") is CitedDefense
    e = reg.entry("defenses", "cited")
    assert e.cite == "Doe et al., A Defense, 2031" and e.tasks == ("reid",)
    with pytest.raises(CompositionError, match="supports task kinds reid, not classification"):
        compose.plan("cited", reg, frozenset({"logits"}), "classification")


def test_registry_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from natbench.registry import get_registry; get_registry().names('defenses'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_entry_points_disabled(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="fancy", value=f"{__name__}:ThirdPartyDefense",
                                       group="natbench.defenses")
    monkeypatch.setattr(registry_mod.metadata, "entry_points", _fake_entry_points([ep]))
    reg = Registry.from_file(entry_points=False)
    assert not reg.has("defenses", "fancy")


# ------------------------------------------------------------------------------- strict registry files
def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "registry.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_minimal_registry_file_loads(tmp_path):
    p = _write(tmp_path, {"defenses": {"x": {"target": "a.b:C", "cite": "someone"}}})
    reg = Registry.from_file(p, entry_points=False)
    assert reg.names("defenses") == ["x"]
    assert reg.names("attacks") == []
    assert reg.entry("defenses", "x").cite == "someone"


def test_registry_entry_without_cite(tmp_path):
    p = _write(tmp_path, {"defenses": {"x": {"target": "a.b:C"}}})
    with pytest.raises(ConfigError, match=r"defenses\.x.*cite"):
        Registry.from_file(p, entry_points=False)


def test_registry_entry_with_unknown_key(tmp_path):
    p = _write(tmp_path, {"defenses": {"x": {"target": "a.b:C", "cite": "c", "targt": "oops"}}})
    with pytest.raises(ConfigError, match="targt"):
        Registry.from_file(p, entry_points=False)


def test_registry_unknown_section(tmp_path):
    p = _write(tmp_path, {"defences": {"x": {"target": "a.b:C", "cite": "c"}}})
    with pytest.raises(ConfigError, match="defences"):
        Registry.from_file(p, entry_points=False)


def test_registry_duplicate_name(tmp_path):
    p = _write(tmp_path, "defenses:\n  x: {target: 'a:B', cite: c}\n  x: {target: 'a:C', cite: c}\n")
    with pytest.raises(ConfigError, match="duplicate key 'x'"):
        Registry.from_file(p, entry_points=False)


def test_registry_entry_with_empty_body(tmp_path):
    p = _write(tmp_path, "defenses:\n  foo:\n")
    with pytest.raises(ConfigError):
        Registry.from_file(p, entry_points=False)


def test_registry_section_not_a_mapping(tmp_path):
    p = _write(tmp_path, "defenses: [a, b]\n")
    with pytest.raises(ConfigError):
        Registry.from_file(p, entry_points=False)


def test_registry_tasks_must_be_a_list(tmp_path):
    p = _write(tmp_path, "defenses:\n  foo: {target: 'a:b', cite: x, tasks: classification}\n")
    try:
        reg = Registry.from_file(p, entry_points=False)
    except ConfigError:
        return
    assert reg.entry("defenses", "foo").tasks == ("classification",)
