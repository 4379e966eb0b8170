"""Tests for natbench.resolve: run ids, provenance hashes, variants and stored configs are pinned.

``tests/data/resolve_pins.json`` holds, for a matrix of resolutions (every built-in task spec and two
``include:`` specs x defenses x profiles x ``--set`` overrides x suites x seeds, plus the dependency runs
``with_defense`` derives and the re-read of each saved config), what the resolution gave when the pins
were written: the run id, the full provenance hash, the variant, a sha256 of the stored config (key
order included) -- or the error. Every existing run directory and store is addressed by these ids, so
any change of the resolver must leave them identical. Regenerate (only for a deliberate, announced
change of a hash) with ``python tests/test_resolve.py``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from natbench import resolve
from natbench.errors import NatbenchError
from natbench.registry import get_registry

REG = get_registry()
PINS = Path(__file__).resolve().parent / "data" / "resolve_pins.json"

#: two user specs that include a built-in one (written next to each other in a temporary folder)
INCLUDE_SPECS = {
    "digits_eps4.yaml": "include: digits\ntask: digits_eps4\nthreat_model: {eps: 4/255}\n"
                        "profiles: {tiny: {epochs: 1, batch_size: 32, lr: 0.1, suite: smoke}}\ndefault_profile: tiny\n",
    "cifar10_small.yaml": "include: cifar10.yaml\ntask: cifar10_small\nmodel: {arch: small_cnn, in_channels: 3, width: 8}\n"
                          "data: {val_fraction: 0.2}\ndefense_params: {nat: {omega: 0.1}}\n",
}
DEFENSES = ("vanilla", "nat", "trades+nat", "pgd-at+awp", "mart", "nuat+ema", "amd+nat+sam")
SETS = ((), ("training.epochs=3",), ("nat.omega=8/255", "threat_model.eps=4/255"), ("data.num_workers=2",),
        ("selection.steps=3", "model.width=16"), ("task.params.height=64",), ("awp.gamma=0.02",))


def _cases() -> list[tuple]:
    """(task, defense, profile, sets, suite, seed): every profile of every task with a few defenses and
    overrides; the long cifar profile lists with fewer combinations."""
    out = []
    tasks = [*REG.names("tasks"), "@digits_eps4.yaml", "@cifar10_small.yaml"]
    for task in tasks:
        spec = resolve.load_task(REG, task) if not task.startswith("@") else None
        profiles = list(spec.profiles) if spec is not None else [None, "quick"] if "cifar" in task else [None, "tiny", "quick"]
        for i, profile in enumerate(profiles):
            for j, defense in enumerate(DEFENSES):
                for k, sets in enumerate(SETS):
                    if (i + j + k) % (5 if len(profiles) > 3 else 2):
                        continue  # a regular thinning of the cartesian product
                    out.append((task, defense, profile, sets, None, 0))
    out += [("digits", "nat", "quick", (), "smoke", 3), ("digits", "trades", None, ("training.epochs=2",), "autoattack", 1),
            ("cifar10", "nat", "mart", ("mart.beta=6",), "aa-audit", 0), ("cifar10", "mart+nat", "mart", (), None, 0),
            ("cifar10", "pgd-at+awp", "at-awp", (), "paper-whitebox", 2), ("reid_market", "trades", "quick", (), "reid-smoke", 0),
            ("voc_detection", "pgd-at", "quick", ("threat_model.eps=4/255",), "det-smoke", 0),
            ("digits", "nat", None, ("training.epochs=3", "nat.omega=0.1"), "blackbox", 0)]
    return out


def _digest(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, default=str).encode()).hexdigest()[:16]  # key order counts (config.yaml)


def _show(r) -> str:
    return f"{r.run_id} {r.config_hash} {_digest(r.config)} [{r.variant}]"


def _outcome(case: tuple, folder: Path) -> dict[str, str]:
    task, defense, profile, sets, suite, seed = case
    path = str(folder / task[1:]) if task.startswith("@") else task
    out: dict[str, str] = {}
    try:
        r = resolve.resolve(REG, path, defense, profile=profile, seed=seed, sets=list(sets), suite=suite)
    except NatbenchError as e:
        return {"run": f"{type(e).__name__}: {e}".replace(str(folder), "<dir>")}
    out["run"] = _show(r)
    out["saved"] = _show(resolve.from_run_config(REG, json.loads(json.dumps(r.config))))
    for dep, dep_sets in (("pgd-at", ()), ("vanilla", ("model.width=16",))):  # NAT's adversary, a surrogate
        try:
            out[f"dep {dep}"] = _show(resolve.with_defense(REG, r, dep, dep_sets))
        except NatbenchError as e:
            out[f"dep {dep}"] = f"{type(e).__name__}: {e}".replace(str(folder), "<dir>")
    return out


def _key(case: tuple) -> str:
    task, defense, profile, sets, suite, seed = case
    return f"{task}|{defense}|{profile}|{','.join(sets)}|{suite}|{seed}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("specs")
    for name, text in INCLUDE_SPECS.items():
        (d / name).write_text(text)
    return d


@pytest.fixture(scope="module", autouse=True)
def cached_specs():
    """Spec files are read once per test module (YAML parsing dominates a resolution's time); the
    resolver itself runs in full for every case."""
    mp = pytest.MonkeyPatch()
    mp.setattr(resolve, "load_task", lru_cache(maxsize=None)(resolve.load_task))
    mp.setattr(resolve, "load_suite", lru_cache(maxsize=None)(resolve.load_suite))
    yield
    mp.undo()


def _check(cases: list[tuple], folder: Path) -> None:
    pins = json.loads(PINS.read_text())
    wrong = []
    for case in cases:
        got = _outcome(case, folder)
        if got != pins[_key(case)]:
            wrong.append(f"{_key(case)}:\n  pinned {pins[_key(case)]}\n  now    {got}")
    assert not wrong, f"{len(wrong)} of {len(cases)} resolutions changed:\n" + "\n".join(wrong[:5])


def test_pins_cover_every_case():
    assert sorted(json.loads(PINS.read_text())) == sorted(_key(c) for c in _cases())


def test_a_sample_of_resolutions_keeps_its_run_id_hash_variant_and_config(folder):
    _check(_cases()[::20], folder)


@pytest.mark.slow
def test_every_pinned_resolution_keeps_its_run_id_hash_variant_and_config(folder):
    _check(_cases(), folder)


def test_pins_include_errors_and_dependencies():
    """The matrix exercises what it claims: errors, variants, dependency runs and include specs."""
    pins = json.loads(PINS.read_text())
    runs = [v["run"] for v in pins.values()]
    assert any("Error:" in r for r in runs) and any(r.endswith("]") and not r.endswith("[]") for r in runs)
    assert any(k.startswith("@") and "Error" not in v["run"] for k, v in pins.items())
    assert sum("dep pgd-at" in v for v in pins.values()) > 50


def test_the_digits_nat_quick_run_id_is_the_one_on_record():
    """A hand-checked anchor beside the pins: the run id of the lead's before/after comparison."""
    r = resolve.resolve(REG, "digits", "nat", profile="quick")
    assert r.run_id == "digits-pgd-at+nat-s0-64e711a4" and r.variant == ""
    assert resolve.with_defense(REG, r, "pgd-at").run_id.startswith("digits-pgd-at-s0-")


def test_the_composition_is_planned_once_per_resolution(monkeypatch):
    """compose.plan runs once for the run's defense (resolve, with_defense, from_run_config each), however
    many --set there are; the suite's transfer surrogates are planned once each (checked, not built)."""
    from natbench import compose

    calls = []
    real = compose.plan
    monkeypatch.setattr(compose, "plan", lambda spec, *a, **k: calls.append(spec) or real(spec, *a, **k))
    r = resolve.resolve(REG, "digits", "nat", profile="quick", sets=["nat.omega=0.1", "training.epochs=2"], suite="smoke")
    assert calls == ["nat"] and r.plan.canonical == "pgd-at+nat" and r.pristine.plan is r.plan
    calls.clear()
    resolve.with_defense(REG, r, "trades")
    resolve.from_run_config(REG, r.config)
    assert calls == ["trades", "pgd-at+nat"]
    calls.clear()
    surrogates = [a for a in resolve.load_suite(REG, "blackbox").attacks if a.attack == "transfer"]
    resolve.resolve(REG, "digits", "trades", sets=["training.epochs=2"], suite="blackbox")
    assert calls[0] == "trades" and len(calls) == 1 + len(surrogates)


# --------------------------------------------------------------- a profile's default suite
def test_quick_profile_names_its_suite_and_suite_option_wins():
    reg = get_registry()
    r = resolve.resolve(reg, "cifar10", "vanilla", profile="quick")
    assert r.suite.suite == "smoke" and r.config["suite"]["suite"] == "smoke"  # stored with the run
    assert resolve.resolve(reg, "cifar10", "vanilla", profile="quick", suite="paper-whitebox").suite.suite == "paper-whitebox"
    assert resolve.resolve(reg, "cifar10", "vanilla", profile="paper").suite.suite == "paper-whitebox"  # the task's


def test_profile_suite_is_not_part_of_the_run_id(tmp_path):
    reg = get_registry()
    base = resolve.resolve(reg, "digits", "vanilla", profile="quick")
    spec = tmp_path / "digits-light.yaml"
    spec.write_text(yaml.safe_dump({"include": "digits", "profiles": {"quick": {"suite": "smoke", "epochs": 3,
                                                                                  "batch_size": 64, "eval_batch_size": 360}}}))
    light = resolve.resolve(reg, str(spec), "vanilla", profile="quick")
    assert light.suite.suite == "smoke" and base.suite.suite == "digits"
    assert light.config_hash == base.config_hash


def test_unknown_profile_suite_is_a_user_error(tmp_path):
    spec = tmp_path / "digits-bad.yaml"
    spec.write_text(yaml.safe_dump({"include": "digits", "profiles": {"quick": {"suite": "smok"}}}))
    with pytest.raises(NatbenchError, match="smok"):
        resolve.resolve(get_registry(), str(spec), "vanilla", profile="quick")


def test_pgd_early_stop_without_the_logits_objective_fails_before_training(tmp_path):
    """PGD's early_stop needs objective 'logits' (to see which rows are fooled): a suite entry without it
    is refused when the run is resolved, not when the attack runs after training."""
    suite = tmp_path / "es.yaml"
    entry = {"id": "pgd-es", "attack": "pgd", "params": {"early_stop": True}}
    suite.write_text(yaml.safe_dump({"suite": "es", "attacks": [entry]}))
    with pytest.raises(NatbenchError, match=r"suite.pgd-es: .*early_stop.*objective: logits"):
        resolve.resolve(get_registry(), "digits", "vanilla", profile="quick", suite=str(suite))
    ok = tmp_path / "es-logits.yaml"
    ok.write_text(yaml.safe_dump({"suite": "es", "attacks": [{**entry, "objective": "logits"}]}))
    assert resolve.resolve(get_registry(), "digits", "vanilla", profile="quick", suite=str(ok)).suite.suite == "es"


if __name__ == "__main__":  # regenerate the pins from the code as it is (a deliberate hash change only)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in INCLUDE_SPECS.items():
            (Path(tmp) / name).write_text(text)
        resolve.load_task = lru_cache(maxsize=None)(resolve.load_task)
        resolve.load_suite = lru_cache(maxsize=None)(resolve.load_suite)
        pins = {_key(c): _outcome(c, Path(tmp)) for c in _cases()}
    PINS.parent.mkdir(exist_ok=True)
    PINS.write_text(json.dumps(pins, indent=0, sort_keys=True) + "\n")
    print(f"{len(pins)} resolutions pinned in {PINS}", file=sys.stderr)
