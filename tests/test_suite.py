"""natbench.suite: one way to add a suite to a finished run, whichever command asks for it
(``natbench eval``, ``natbench run`` reusing a run, a deferred dependency's evaluation); a killed evaluation
resumes from its partial results and never mixes configurations; bf16 evaluation needs CUDA and is recorded."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import Runner
from natbench.store import CheckRow, Store

from helpers import digits_task

SETS = ["training.epochs=1"]
ONE_ATTACK = "suite: one\ndescription: one more attack\nattacks:\n  - {id: fgsm-b, attack: fgsm}\n"
FLIPPED = "iterative_beats_single_step"  # judged from fgsm and pgd-5 together: a one-attack suite cannot judge it


def _checks(root: Path, run_id: str) -> list[tuple]:
    df = Store(root / "natbench.sqlite").checks(run_id)
    return sorted((r.checkpoint, r.name, bool(r.passed), r.detail) for r in df.itertuples())


@pytest.mark.slow
def test_a_smaller_suite_keeps_the_recorded_checks_on_every_path(tmp_path, monkeypatch):
    """A run evaluated with its full suite shows a failed check; a later evaluation with one more
    attack (which cannot judge that check) must not erase it -- and ``natbench eval`` and ``natbench
    run`` (reusing the run) must leave the same checks. Before: eval replaced every check of the
    checkpoint with the small suite's, run dropped the small suite's checks."""
    from natbench.cli import main

    monkeypatch.setattr("natbench.suite.escalations", lambda *a, **k: [])  # a 1-epoch model: no Square here
    reg = get_registry()
    r = resolve(reg, "digits", "vanilla", seed=3, sets=SETS, suite="smoke")
    a = tmp_path / "a"
    Runner(a, None, torch.device("cpu"), registry=reg).run(r)
    store = Store(a / "natbench.sqlite")
    recorded = store.checks(r.run_id)
    assert FLIPPED in set(recorded.name)
    flipped = [CheckRow(c.checkpoint, c.name, c.passed and c.name != FLIPPED, "flipped" if c.name == FLIPPED else c.detail)
               for c in recorded.itertuples()]
    store.add_results(r.run_id, [], [], flipped, suite=[])  # as if the full suite had shown the symptom
    store.close()
    before = _checks(a, r.run_id)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    suite = tmp_path / "one.yaml"
    suite.write_text(ONE_ATTACK)

    assert main(["eval", r.run_id, "--suite", str(suite), "--root", str(a), "--device", "cpu"]) == 0
    r_one = resolve(reg, "digits", "vanilla", seed=3, sets=SETS, suite=str(suite))
    assert r_one.run_id == r.run_id  # the suite is not part of the run's identity: the run is reused
    Runner(b, None, torch.device("cpu"), registry=reg).run(r_one)

    for root in (a, b):
        assert ("best", "fgsm-b") in {(x.checkpoint, x.attack) for x in Store(root / "natbench.sqlite").results().itertuples()}
        failed = {(c, n) for c, n, ok, _ in _checks(root, r.run_id) if not ok}
        assert {("best", FLIPPED), ("last", FLIPPED)} <= failed, root.name
        assert {(c, n) for c, n, _, _ in before} <= {(c, n) for c, n, _, _ in _checks(root, r.run_id)}
    assert _checks(a, r.run_id) == _checks(b, r.run_id)  # one path: the same checks whichever command added the suite


# ------------------------------------------------------------------------------ bf16 evaluation
def test_bf16_evaluation_needs_cuda(tmp_path):
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Runner(tmp_path, registry=get_registry(), eval_bf16=True)


@pytest.mark.gpu
def test_bf16_evaluation_is_recorded_with_every_result(tmp_path):
    r, task = digits_task("vanilla", profile="quick", sets=["training.epochs=1"], suite="smoke")
    runner = Runner(tmp_path, device=torch.device("cuda"), registry=get_registry(), eval_bf16=True)
    run_id = runner.run(r)
    res = runner.store.results("digits")
    res = res[res.run_id == run_id]
    assert set(res[res.metric == "bf16_autocast"].attack) == {"clean", "fgsm", "pgd-5"}


# ------------------------------------------------------------------------- resuming an evaluation
@pytest.mark.slow
def test_killed_evaluation_resumes_and_never_mixes_configurations(masked, tmp_path, monkeypatch):
    """eval-partial.pt keeps finished (checkpoint, attack) results; a rerun reuses them only when
    the attack's configuration is the same."""
    import dataclasses

    from natbench.runner import PARTIAL

    r, task, _, run_dir = masked
    (run_dir / PARTIAL).unlink(missing_ok=True)  # another test evaluated these checkpoints
    calls = []
    real = type(task).evaluate

    def counting(self, model, loader, attack=None, **kw):
        calls.append(getattr(attack, "name", "clean"))
        if len(calls) == 3 and not getattr(self, "_crashed", False):
            self._crashed = True
            raise KeyboardInterrupt
        return real(self, model, loader, attack, **kw)

    monkeypatch.setattr(type(task), "evaluate", counting)
    runner = Runner(tmp_path, registry=get_registry())
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(r, task, run_dir, ("best",))
    assert (run_dir / PARTIAL).exists()
    calls.clear()
    resumed = runner.evaluate(r, task, run_dir, ("best",))
    assert calls[:1] == ["pgd"], calls  # clean and fgsm came from the partial file
    monkeypatch.setattr(type(task), "evaluate", real)
    (run_dir / PARTIAL).unlink()
    fresh = Runner(tmp_path, registry=get_registry()).evaluate(r, task, run_dir, ("best",))
    key = lambda rows: sorted((x.attack, x.metric, x.value) for x in rows)  # noqa: E731
    assert key(resumed[0]) == key(fresh[0])
    # the same attack id with another configuration is evaluated again, not reused
    changed = dataclasses.replace(r.suite.attacks[1], params={"steps": 2})
    r2 = r.with_suite(dataclasses.replace(r.suite, attacks=(r.suite.attacks[0], changed)))
    monkeypatch.setattr(type(task), "evaluate", counting)
    calls.clear()
    Runner(tmp_path, registry=get_registry()).evaluate(r2, task, run_dir, ("best",))
    assert "pgd" in calls
    (run_dir / PARTIAL).unlink()


# ------------------------------------------------------------------------------ seeds of a suite's attacks
SEEDED = ("suite: seeded\ndescription: two columns at the same random starts\nattacks:\n"
          "  - {id: a, attack: pgd, params: {steps: 1}}\n"
          "  - {id: b, attack: pgd, params: {steps: 2}, seed_as: a}\n"
          "  - {id: c, attack: pgd, params: {steps: 3}}\n")


def test_seed_as_draws_an_attacks_starts_from_another_ids_seed(tmp_path, monkeypatch):
    """aa-audit compares natbench's AutoAttack with the original *at the same seed* (its description);
    each attack id drew from its own seed, so the two columns differed by the random starts alone (3 of
    359 flags in L1). ``seed_as: ID`` gives an entry the generator seed of entry ID."""
    from natbench.tasks.classification.task import ClassificationTask

    monkeypatch.setattr("natbench.suite.escalations", lambda *a, **k: [])
    seeds: dict[int, set[int]] = {}
    evaluate = ClassificationTask.evaluate

    def spy(self, model, loader, attack=None, **kw):
        if attack is not None and kw.get("generator") is not None:
            seeds.setdefault(attack.params.steps, set()).add(kw["generator"].initial_seed())
        return evaluate(self, model, loader, attack, **kw)

    monkeypatch.setattr(ClassificationTask, "evaluate", spy)
    suite = tmp_path / "seeded.yaml"
    suite.write_text(SEEDED)
    reg = get_registry()
    r = resolve(reg, "digits", "vanilla", seed=3, sets=SETS, suite=str(suite))
    Runner(tmp_path / "root", None, torch.device("cpu"), registry=reg).run(r)
    assert len(seeds[1]) == len(seeds[2]) == len(seeds[3]) == 1
    assert seeds[2] == seeds[1] != seeds[3]


@pytest.mark.parametrize("entry, fragment", [
    ("{id: b, attack: pgd, seed_as: nope}", "bad.yaml.attacks[1].seed_as: 'nope' is not an id of this suite"),
    ("{id: b, attack: pgd, seed_as: b}", "bad.yaml.attacks[1].seed_as: 'b' is this entry's own id"),
])
def test_seed_as_names_another_entry(tmp_path, entry, fragment):
    suite = tmp_path / "bad.yaml"
    suite.write_text(f"suite: bad\ndescription: x\nattacks:\n  - {{id: a, attack: pgd}}\n  - {entry}\n")
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        resolve(get_registry(), "digits", "vanilla", seed=3, sets=SETS, suite=str(suite))
