"""natbench.leaderboard_facts: what a run records for the leaderboard (its metrics, its escalations as
run), written with its results, read back instead of re-derived; legacy runs read as before."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from natbench import leaderboard
from natbench import leaderboard_facts as F
from natbench.store import FlagRow, ResultRow, RunRecord, Store

SUITE_CFG = {"attacks": [{"id": "fgsm", "attack": "fgsm", "params": {}},
                         {"id": "pgd-20", "attack": "pgd", "params": {"steps": 20}}]}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "natbench.sqlite")
    yield s
    s.close()


def _record(store, run_id, *, config=None, facts=None, escalated=()):
    run = RunRecord(run_id=run_id, task="digits", defense="pgd-at", profile="default", seed=0, config_hash=f"h-{run_id}",
                    git_rev="g", versions={}, device="cpu", started="2024-01-01T00:00:00Z", finished="2024-01-01T01:00:00Z",
                    wall_train_s=1.0, wall_eval_s=1.0, config={"suite": SUITE_CFG} if config is None else config,
                    suite=["clean", "fgsm", "pgd-20"])
    rows = [ResultRow("best", a, "accuracy", v) for a, v in (("clean", 0.9), ("fgsm", 0.6), ("pgd-20", 0.5))]
    rows += [ResultRow("best", a, "accuracy", 0.4) for a in escalated]
    flags = [FlagRow("best", a, np.array([1, 1, 0, 1], bool)) for a in ("clean", "fgsm", "pgd-20", *escalated)]
    store.record_run(run, rows, flags, [], facts=facts)


def _suite(*attacks):
    from natbench.taskspec import SuiteAttack, SuiteSpec

    return SuiteSpec(suite="s", attacks=tuple(SuiteAttack(id=i, attack=a, params=p) for i, a, p in attacks))


def test_facts_record_the_escalations_as_the_runner_runs_them():
    from natbench.tasks.classification import ClassificationTask

    # pgd-b gives no steps: the runner's PGD has PGD.Params' default, 10; the restarts PGD takes the
    # largest of the suite's PGD step counts (50), not a 0 for the missing one
    suite = _suite(("pgd-a", "pgd", {"steps": 50}), ("pgd-b", "pgd", {}), ("fgsm", "fgsm", {}))
    results = [ResultRow("best", a, "accuracy", 0.1) for a in ("clean", "pgd-a", "escalated-restarts", "escalated-square")]
    got = F.facts(ClassificationTask, suite, results)
    assert got == {"metrics": ["accuracy"], "headline_metric": "accuracy",
                   "escalations": {"escalated-restarts": {"attack": "pgd", "params": {"restarts": 10, "steps": 50}},
                                   "escalated-square": {"attack": "square", "params": {}}}}
    only_b = F.facts(ClassificationTask, _suite(("pgd-b", "pgd", {})), results[:3])
    assert only_b["escalations"] == {"escalated-restarts": {"attack": "pgd", "params": {"restarts": 10, "steps": 10}}}
    assert "escalations" not in F.facts(ClassificationTask, suite, results[:2])  # nothing escalated



def test_facts_never_cost_a_run_its_record(caplog):
    """What cannot be worked out is left out (the leaderboard then derives it), never an error that
    would lose a finished run's results."""
    from natbench.tasks.classification import ClassificationTask

    bad = _suite(("pgd-x", "pgd", {"stepz": 3}))  # a params key PGD does not have
    got = F.facts(ClassificationTask, bad, [ResultRow("best", "escalated-restarts", "accuracy", 0.1)])
    assert got == {"metrics": ["accuracy"], "headline_metric": "accuracy"}
    assert "could not record the escalations" in caplog.text

def test_reid_and_detection_kinds_record_their_metrics():
    from natbench.tasks.detection import DetectionTask
    from natbench.tasks.reid import ReIDTask

    assert F.facts(ReIDTask)["metrics"] == ["mAP", "rank1"] and F.facts(ReIDTask)["headline_metric"] == "mAP"
    assert F.facts(DetectionTask)["metrics"] == ["mAP"]


def test_store_writes_merges_replaces_and_drops_the_facts(store, tmp_path):
    facts = {"metrics": ["accuracy"], "headline_metric": "accuracy",
             "escalations": {"escalated-square": {"attack": "square", "params": {}}}}
    _record(store, "a", facts=facts, escalated=("escalated-square",))
    assert F.get(store, "a") == facts
    more = {"metrics": ["accuracy"], "escalations": {"escalated-restarts": {"attack": "pgd", "params": {"restarts": 10, "steps": 40}}}}
    store.add_results("a", [ResultRow("best", "escalated-restarts", "accuracy", 0.3)], [], [], suite=["clean"], facts=more)
    assert set(F.get(store, "a")["escalations"]) == {"escalated-square", "escalated-restarts"}
    store.add_results("a", [ResultRow("best", "fgsm", "accuracy", 0.6)], [], [], suite=["clean"])  # no facts: kept
    assert set(F.get(store, "a")["escalations"]) == {"escalated-square", "escalated-restarts"}
    with Store(tmp_path / "natbench.sqlite", readonly=True) as ro:
        assert F.get(ro, "a")["escalations"]["escalated-restarts"]["params"]["steps"] == 40
    _record(store, "a")  # recorded again without facts: the old ones do not survive
    assert F.get(store, "a") == {}
    _record(store, "b", facts=facts)
    store.delete_run("b")
    assert F.get(store, "b") == {} and store.meta("facts/b") is None


def test_leaderboard_reads_the_recorded_metrics_and_escalation(store):
    # the run's config says nothing of its kind: without facts the metrics are accuracy (legacy)
    _record(store, "a", escalated=("escalated-restarts",))
    assert leaderboard.task_metrics(store, "digits") == ("accuracy",)
    legacy = leaderboard.cost_rows(store, "digits", leaderboard.table(store, "digits"))[2]
    # legacy: the restarts PGD at the largest steps written in the configured suite (20): 10 x 20
    assert legacy["escalated-restarts"]["params"] == {"restarts": 10, "steps": 20}
    assert legacy["escalated-restarts"]["budget"].backward == 200
    # recorded: what the run ran (here 50 steps), whatever the rule says today
    facts = {"metrics": ["accuracy"], "headline_metric": "accuracy",
             "escalations": {"escalated-restarts": {"attack": "pgd", "params": {"restarts": 10, "steps": 50}}}}
    _record(store, "a", facts=facts, escalated=("escalated-restarts",))
    per_attack = leaderboard.cost_rows(store, "digits", leaderboard.table(store, "digits"))[2]
    assert per_attack["escalated-restarts"]["params"] == {"restarts": 10, "steps": 50}
    assert per_attack["escalated-restarts"]["budget"].backward == 500 and per_attack["pgd-20"]["budget"].backward == 20
    _record(store, "a", facts={**facts, "metrics": ["mAP", "rank1"]})  # read, not derived from the task kind
    assert leaderboard.task_metrics(store, "digits") == ("mAP", "rank1")


def test_legacy_store_without_facts_reads_the_task_kind(store):
    _record(store, "r", config={"task": {"kind": "reid"}, "suite": SUITE_CFG})
    assert store.meta("facts/r") is None
    assert leaderboard.task_metrics(store, "digits") == ("mAP", "rank1")
    _record(store, "r", config={"task": {"kind": "no-such-kind"}})
    assert leaderboard.task_metrics(store, "digits") == ("accuracy",)


@pytest.mark.slow
def test_a_run_records_its_facts(tmp_path):
    from natbench.cli import main

    root = tmp_path / "runs"
    assert main(["run", "--task", "digits", "--defense", "vanilla", "--profile", "quick", "--set", "training.epochs=1",
                 "--set", "model.width=8", "--suite", "digits", "--root", str(root), "--device", "cpu",
                 "--no-leaderboard"]) == 0
    with Store(root / "natbench.sqlite", readonly=True) as s:
        run_id = s.runs()["run_id"].iloc[0]
        got = F.get(s, run_id)
        assert got["metrics"] == ["accuracy"] and got["headline_metric"] == "accuracy"
        escalated = {a for a in s.results()["attack"] if a.startswith("escalated-")}
        assert set(got.get("escalations", {})) == escalated


class _Rounded(torch.nn.Module):
    """Rounds its input to 2 grey levels before a linear layer: a zero input gradient (gradient masking)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.round(x).flatten(1))


@pytest.mark.slow
def test_an_escalated_evaluation_is_recorded_as_run(tmp_path):
    """An outside model that masks its gradient gets the escalated Square (natbench.checks); the run
    records it and the leaderboard's cost reads it from there."""
    import natbench

    torch.manual_seed(0)
    res = natbench.evaluate(_Rounded(), task="digits", suite="smoke", n=12, root=tmp_path)
    assert "escalated-square" in res.robust
    with Store(tmp_path / "natbench.sqlite", readonly=True) as s:
        run_id = s.runs()["run_id"].iloc[0]
        assert F.get(s, run_id)["escalations"] == {"escalated-square": {"attack": "square", "params": {}}}
        per_attack = leaderboard.cost_rows(s, "digits", leaderboard.table(s, "digits"))[2]
        assert per_attack["escalated-square"]["attack"] == "square"
