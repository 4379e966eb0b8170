"""Tests for natbench.store: round trip, atomic replace/rollback, flag packing, WAL, cascades."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from natbench.errors import RunError
from natbench.store import CheckRow, FlagRow, ResultRow, RunRecord, Store


def make_run(run_id="r1", *, task="digits", defense="vanilla", seed=0, config_hash="h1",
             suite=("clean", "pgd-20"), variant="") -> RunRecord:
    return RunRecord(
        run_id=run_id, task=task, defense=defense, profile="smoke", seed=seed,
        config_hash=config_hash, git_rev="abc123", versions={"torch": "2.3.0", "numpy": "1.26"},
        device="cpu", started="2024-01-01T00:00:00Z", finished="2024-01-01T00:10:00Z",
        wall_train_s=12.5, wall_eval_s=3.25, config={"lr": 0.1, "eps": 8 / 255, "nested": {"a": [1, 2]}},
        suite=list(suite), variant=variant,
    )


RESULTS = [ResultRow("best", "clean", "accuracy", 0.9), ResultRow("best", "pgd-20", "accuracy", 0.5),
           ResultRow("last", "clean", "accuracy", 0.88)]
CORRECT = {"clean": np.array([1, 1, 1, 0, 1, 1, 0, 1, 1, 1], bool),
           "pgd-20": np.array([1, 0, 1, 0, 1, 0, 0, 1, 1, 0], bool),
           "cw": np.array([0, 1, 1, 0, 1, 1, 0, 1, 0, 0], bool)}
FLAGS = [FlagRow("best", a, c) for a, c in CORRECT.items()]
CHECKS = [CheckRow("best", "eps-ball", True, "max |d| = 0.0313"),
          CheckRow("best", "gradient-masking", False, "black-box > white-box")]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "sub" / "natbench.sqlite")
    yield s
    s.close()


def count(store, table, run_id):
    con = sqlite3.connect(store.path)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table} WHERE run_id = ?", (run_id,)).fetchone()[0]
    finally:
        con.close()


def test_round_trip(store):
    run = make_run()
    store.record_run(run, RESULTS, FLAGS, CHECKS)
    assert store.get_run("r1") == run
    assert store.get_run("nope") is None
    assert store.find_complete("h1") == "r1"
    assert store.find_complete("other") is None

    res = store.results()
    assert list(res.columns) == ["run_id", "task", "defense", "profile", "variant", "seed", "checkpoint",
                                 "attack", "metric", "value"]
    assert list(zip(res.checkpoint, res.attack, res.value)) == [
        (r.checkpoint, r.attack, r.value) for r in RESULTS]
    assert store.results(task="other").empty

    runs = store.runs()
    assert len(runs) == 1 and "config" not in runs.columns and "config_json" not in runs.columns
    assert runs.loc[0, "suite"] == ["clean", "pgd-20"] and runs.loc[0, "status"] == "complete"
    assert runs.loc[0, "versions"] == {"torch": "2.3.0", "numpy": "1.26"}

    checks = store.checks("r1")
    assert list(checks.columns) == ["checkpoint", "name", "passed", "detail"]
    assert checks["passed"].tolist() == [True, False]
    assert checks["detail"].tolist() == [c.detail for c in CHECKS]

    flags = store.flags("r1", "best")
    assert list(flags) == list(CORRECT)
    for a, c in CORRECT.items():
        assert flags[a].dtype == bool and np.array_equal(flags[a], c)
    assert store.flags("r1", "last") == {}


def test_persists_across_reopen(tmp_path):
    path = tmp_path / "natbench.sqlite"
    with Store(path) as s:
        s.record_run(make_run(), RESULTS, FLAGS, CHECKS)
    with Store(path) as s:
        assert s.get_run("r1") == make_run()
        assert len(s.results()) == len(RESULTS)


def test_nan_value_round_trips(store):
    store.record_run(make_run(), [ResultRow("best", "clean", "accuracy", float("nan"))], [], [])
    assert np.isnan(store.results()["value"].iloc[0])


def test_replace_is_atomic(store):
    store.record_run(make_run(), RESULTS, FLAGS, CHECKS)
    new = make_run(config_hash="h2", seed=3)
    new_results = [ResultRow("best", "clean", "accuracy", 0.7)]
    store.record_run(new, new_results, [FlagRow("last", "clean", np.ones(4, bool))], [])
    assert store.get_run("r1") == new
    res = store.results()
    assert len(res) == 1 and res.value.iloc[0] == 0.7 and res.seed.iloc[0] == 3
    assert store.flags("r1", "best") == {}
    assert np.array_equal(store.flags("r1", "last")["clean"], np.ones(4, bool))
    assert store.checks("r1").empty
    assert store.find_complete("h1") is None and store.find_complete("h2") == "r1"


def test_repeated_keys_are_refused_before_writing(store):
    dup = [*RESULTS, ResultRow("best", "clean", "accuracy", 0.1)]  # duplicate primary key
    with pytest.raises(ValueError, match="repeat"):
        store.record_run(make_run(), dup, FLAGS, CHECKS)
    assert store.get_run("r1") is None
    assert store.runs().empty and store.results().empty
    for table in ("runs", "results", "flags", "checks"):
        assert count(store, table, "r1") == 0


def test_failing_insert_writes_nothing(store, monkeypatch):
    real = Store._insert

    def crash(self, conn, rows):  # the rows are inserted, then the transaction fails
        real(self, conn, rows)
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(Store, "_insert", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        store.record_run(make_run(), RESULTS, FLAGS, CHECKS)
    for table in ("runs", "results", "flags", "checks"):
        assert count(store, table, "r1") == 0


def test_failing_replace_keeps_old_run(store, monkeypatch):
    store.record_run(make_run(), RESULTS, FLAGS, CHECKS)
    dup_flags = [FlagRow("best", "clean", np.ones(3, bool))] * 2
    with pytest.raises(ValueError, match="repeat"):
        store.record_run(make_run(config_hash="h2"), [], dup_flags, [])
    monkeypatch.setattr(Store, "_insert", lambda self, conn, rows: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        store.record_run(make_run(config_hash="h2"), [], [], [])  # deleted the old rows, then crashed
    monkeypatch.undo()
    assert store.get_run("r1") == make_run()
    assert len(store.results()) == len(RESULTS)
    assert np.array_equal(store.flags("r1", "best")["cw"], CORRECT["cw"])
    # the connection is still usable afterwards
    store.record_run(make_run("r2", config_hash="h3"), [], [], [])
    assert store.find_complete("h3") == "r2"


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_flags_pack_unpack_exact(store, n):
    rng = np.random.default_rng(n)
    correct = rng.random(n) < 0.5
    ones, zeros = np.ones(n, bool), np.zeros(n, bool)
    store.record_run(make_run(), [], [FlagRow("best", "rand", correct), FlagRow("best", "ones", ones),
                                      FlagRow("best", "zeros", zeros)], [])
    flags = store.flags("r1", "best")
    for name, want in (("rand", correct), ("ones", ones), ("zeros", zeros)):
        assert flags[name].shape == (n,) and flags[name].dtype == bool
        assert np.array_equal(flags[name], want)


def test_flags_reject_non_1d(store):
    with pytest.raises(ValueError):
        store.record_run(make_run(), [], [FlagRow("best", "clean", np.ones((2, 2), bool))], [])
    assert store.get_run("r1") is None


def test_worst_case(store):
    store.record_run(make_run(), RESULTS, FLAGS, CHECKS)
    # correct under clean AND pgd-20: indices 0, 2, 4, 7, 8 -> 5/10
    assert store.worst_case("r1", "best", ["clean", "pgd-20"]) == pytest.approx(0.5)
    # ... AND cw: indices 2, 4, 7 -> 3/10
    assert store.worst_case("r1", "best", ["clean", "pgd-20", "cw"]) == pytest.approx(0.3)
    assert store.worst_case("r1", "best", ["cw"]) == pytest.approx(0.5)
    with pytest.raises(RunError, match="aa"):
        store.worst_case("r1", "best", ["clean", "aa"])
    with pytest.raises(ValueError):
        store.worst_case("r1", "best", [])


def test_wal_mode_and_schema_version(store):
    con = sqlite3.connect(store.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == 3
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    finally:
        con.close()
    assert {"runs", "results", "flags", "checks", "runs_task", "runs_config_hash"} <= names
    with store._engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_version_1_store_is_migrated(tmp_path):
    """A store written before ``runs.variant`` existed opens, keeps its runs, and gets variant ''."""
    path = tmp_path / "natbench.sqlite"
    v1 = """
    CREATE TABLE runs (run_id TEXT PRIMARY KEY, task TEXT NOT NULL, defense TEXT NOT NULL, profile TEXT NOT NULL,
        seed INTEGER NOT NULL, config_hash TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'complete',
        git_rev TEXT NOT NULL, versions_json TEXT NOT NULL, device TEXT NOT NULL, started TEXT NOT NULL,
        finished TEXT NOT NULL, wall_train_s REAL NOT NULL, wall_eval_s REAL NOT NULL, config_json TEXT NOT NULL,
        suite_json TEXT NOT NULL);
    CREATE TABLE results (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, checkpoint TEXT NOT NULL,
        attack TEXT NOT NULL, metric TEXT NOT NULL, value REAL, PRIMARY KEY (run_id, checkpoint, attack, metric));
    CREATE TABLE flags (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, checkpoint TEXT NOT NULL,
        attack TEXT NOT NULL, n INTEGER NOT NULL, packed BLOB NOT NULL, PRIMARY KEY (run_id, checkpoint, attack));
    CREATE TABLE checks (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, checkpoint TEXT NOT NULL,
        name TEXT NOT NULL, passed INTEGER NOT NULL, detail TEXT NOT NULL);
    """  # the schema of natbench's first stores (before runs.variant)
    con = sqlite3.connect(path)
    con.executescript(v1)
    con.execute("INSERT INTO runs VALUES ('old', 'digits', 'vanilla', 'default', 0, 'h0', 'complete', 'x', '{}', "
                "'cpu', 's', 'f', 1.0, 1.0, '{}', '[\"clean\"]')")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    store = Store(path)
    assert store.get_run("old").variant == ""
    store.record_run(make_run("r2", config_hash="h2", variant="nat.omega=0.06"), RESULTS, FLAGS, CHECKS)
    assert store.get_run("r2").variant == "nat.omega=0.06"
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 3
    con.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "natbench.sqlite"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(RunError, match="schema version 99"):
        Store(path)


def test_delete_cascades(store):
    store.record_run(make_run(), RESULTS, FLAGS, CHECKS)
    store.record_run(make_run("r2", config_hash="h2"), RESULTS, FLAGS, CHECKS)
    store.delete_run("r1")
    assert store.get_run("r1") is None
    for table in ("runs", "results", "flags", "checks"):
        assert count(store, table, "r1") == 0
        assert count(store, table, "r2") > 0
    store.delete_run("r1")  # missing run: no-op


def test_runs_filter_by_task(store):
    store.record_run(make_run("a", task="digits"), RESULTS, [], [])
    store.record_run(make_run("b", task="cifar10", config_hash="h2"), RESULTS, [], [])
    assert store.runs("cifar10")["run_id"].tolist() == ["b"]
    assert set(store.results("digits")["run_id"]) == {"a"}
    assert isinstance(store.runs(), pd.DataFrame) and len(store.runs()) == 2


def test_store_does_not_import_torch():
    code = "import sys, natbench.store; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
