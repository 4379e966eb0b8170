"""natbench sweeps through submitit: dependency stages first, cells complete in the store skipped."""
from __future__ import annotations

import pytest

from natbench.registry import get_registry
from natbench.store import Store
from natbench.sweep import grid_sets, make_executor, plan_sweep, run_sweep

REG = get_registry()
TINY = ["training.epochs=1", "threat_model.train_steps=2"]


def test_plan_orders_dependencies_and_dedupes_them():
    plan = plan_sweep(REG, None, ["digits"], ["nat", "trades+nat"], [0, 1], sets=TINY, profile="quick", suite="smoke")
    by = {c.label.split(" / ")[1] + f"/{c.label.split(' / ')[2]}": c for c in plan.cells}
    assert {c.stage for c in plan.cells} == {0, 1}
    vanilla = [c for c in plan.cells if "/ vanilla /" in c.label]
    assert len(vanilla) == 2 and all(c.stage == 1 for c in vanilla)  # one adversary per seed, shared by both NATs
    assert by["pgd-at+nat/seed 0"].needs == {by["vanilla/seed 0"].run_id}
    stages = plan.stages()
    assert [len(s) for s in stages] == [2, 4] and all("vanilla" in c.label for c in stages[0])


def test_grid_sets_and_bad_grids():
    from natbench.errors import ConfigError

    assert grid_sets(["a.b=1,2", "c.d=x"]) == [("a.b=1", "c.d=x"), ("a.b=2", "c.d=x")]
    assert grid_sets([]) == [()]
    with pytest.raises(ConfigError):
        grid_sets(["a.b=1,1"])
    with pytest.raises(ConfigError, match="executor"):
        make_executor("kubernetes", "/tmp")


@pytest.mark.slow
def test_debug_executor_runs_a_2x2_grid_and_a_second_sweep_does_nothing(tmp_path):
    root = tmp_path / "runs"
    args = (["digits"], ["vanilla", "pgd-at"], [0, 1])
    plan = plan_sweep(REG, None, *args, sets=TINY, profile="quick", suite="smoke")
    assert len(plan.cells) == 4 and [len(s) for s in plan.stages()] == [4]
    run_sweep(plan, make_executor("debug", tmp_path / "logs"), root=root, db=None, data_root=None, device="cpu")
    assert [c.status for c in plan.cells] == ["done"] * 4, [(c.label, c.error, c.logs) for c in plan.cells]
    store = Store(root / "natbench.sqlite")
    assert sorted(store.runs()[["defense", "seed"]].itertuples(index=False, name=None)) == [
        ("pgd-at", 0), ("pgd-at", 1), ("vanilla", 0), ("vanilla", 1)]
    again = plan_sweep(REG, store, *args, sets=TINY, profile="quick", suite="smoke")
    assert [c.status for c in again.cells] == ["skipped"] * 4 and again.stages() == []
    n = len(store.runs())
    run_sweep(again, make_executor("debug", tmp_path / "logs"), root=root, db=None, data_root=None, device="cpu")
    assert len(store.runs()) == n  # nothing ran


@pytest.mark.slow
def test_local_executor_runs_a_cell_in_a_subprocess_with_its_logs(tmp_path):
    root = tmp_path / "runs"
    plan = plan_sweep(REG, None, ["digits"], ["vanilla"], [0], sets=TINY, profile="quick", suite="smoke")
    run_sweep(plan, make_executor("local", tmp_path / "logs", time_min=30), root=root, db=None, data_root=None,
              device="cpu", parallel=2, poll_s=0.2)
    (cell,) = plan.cells
    assert cell.status == "done", (cell.error, cell.logs)
    assert cell.logs[0].endswith(".out")
    assert Store(root / "natbench.sqlite").runs().run_id.tolist() == [cell.run_id]  # the subprocess recorded it


class _Handle:
    def __init__(self, fn):
        self.fn = fn

    def done(self):
        return True

    def result(self):
        return self.fn()


class _FakeExecutor:
    """Runs nothing: jobs of vanilla seed 1 fail, the others succeed (records what was submitted)."""

    cluster = "fake"

    def __init__(self):
        self.submitted = []

    def submit(self, job):
        self.submitted.append((job.config["defense"]["canonical"], job.config["seed"]))

        def fn():
            if job.config["defense"]["canonical"] == "vanilla" and job.config["seed"] == 1:
                raise RuntimeError("node died")
            return "ok"

        return _Handle(fn)


def test_a_failed_dependency_fails_its_dependents_without_running_them():
    plan = plan_sweep(REG, None, ["digits"], ["nat"], [0, 1], sets=TINY, profile="quick", suite="smoke")
    ex = _FakeExecutor()
    run_sweep(plan, ex, root="/nonexistent", db=None, data_root=None, device="cpu", poll_s=0)
    status = {(c.label.split(" / ")[1], c.label.split(" / ")[2]): (c.status, c.error) for c in plan.cells}
    assert status[("vanilla", "seed 0")] == ("done", "") and status[("pgd-at+nat", "seed 0")] == ("done", "")
    assert status[("vanilla", "seed 1")] == ("failed", "node died")
    assert status[("pgd-at+nat", "seed 1")][0] == "failed" and "dependency" in status[("pgd-at+nat", "seed 1")][1]
    assert ex.submitted[:2] == [("vanilla", 0), ("vanilla", 1)] and ("pgd-at+nat", 1) not in ex.submitted
