"""Tests for results keyed by threat model (schema 3): an old store migrates with its numbers intact
and meaning "the run's own threat model"; rows of another threat model are stored, replaced and read
apart from the run's own (natbench.store_schema, natbench.store_write, natbench.store_read)."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from natbench import threats
from natbench.errors import ConfigError
from natbench.store import CheckRow, FlagRow, ResultRow, Store
from tests.test_store import CHECKS, CORRECT, FLAGS, RESULTS, make_run

#: the schema natbench wrote at version 2 (runs.variant, the checkpoints table, no threat column)
V2 = """
CREATE TABLE runs (run_id TEXT NOT NULL, task TEXT NOT NULL, defense TEXT NOT NULL, profile TEXT NOT NULL,
    seed INTEGER NOT NULL, config_hash TEXT NOT NULL, status TEXT DEFAULT 'complete' NOT NULL, git_rev TEXT NOT NULL,
    versions_json TEXT NOT NULL, device TEXT NOT NULL, started TEXT NOT NULL, finished TEXT NOT NULL,
    wall_train_s FLOAT NOT NULL, wall_eval_s FLOAT NOT NULL, config_json TEXT NOT NULL, suite_json TEXT NOT NULL,
    variant TEXT DEFAULT '' NOT NULL, PRIMARY KEY (run_id));
CREATE INDEX runs_task ON runs (task);
CREATE INDEX runs_config_hash ON runs (config_hash);
CREATE TABLE results (run_id TEXT NOT NULL, checkpoint TEXT NOT NULL, attack TEXT NOT NULL, metric TEXT NOT NULL,
    value FLOAT, PRIMARY KEY (run_id, checkpoint, attack, metric), FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE);
CREATE TABLE flags (run_id TEXT NOT NULL, checkpoint TEXT NOT NULL, attack TEXT NOT NULL, n INTEGER NOT NULL,
    packed BLOB NOT NULL, PRIMARY KEY (run_id, checkpoint, attack), FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE);
CREATE TABLE checks (run_id TEXT NOT NULL, checkpoint TEXT NOT NULL, name TEXT NOT NULL, passed INTEGER NOT NULL,
    detail TEXT NOT NULL, FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE);
CREATE INDEX checks_run ON checks (run_id);
CREATE TABLE checkpoints (run_id TEXT NOT NULL, checkpoint TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (run_id, checkpoint), FOREIGN KEY(run_id) REFERENCES runs (run_id) ON DELETE CASCADE);
CREATE TABLE natbench_meta ("key" TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
"""


def v2_store(path):
    """A schema-2 store holding run r1 (RESULTS, FLAGS, CHECKS) as natbench 2 wrote it (rows in an order
    the primary key would not give, to see the migration keep it)."""
    con = sqlite3.connect(path)
    con.executescript(V2)
    con.execute("INSERT INTO runs VALUES ('r1', 'digits', 'vanilla', 'smoke', 0, 'h1', 'complete', 'abc123', '{}', "
                "'cpu', '2024-01-01T00:00:00Z', '2024-01-01T00:10:00Z', 1.0, 1.0, '{}', '[\"clean\", \"pgd-20\"]', '')")
    for r in reversed(RESULTS):
        con.execute("INSERT INTO results VALUES ('r1', ?, ?, ?, ?)", (r.checkpoint, r.attack, r.metric, r.value))
    for f in FLAGS:
        con.execute("INSERT INTO flags VALUES ('r1', ?, ?, ?, ?)",
                    (f.checkpoint, f.attack, len(f.correct), np.packbits(f.correct).tobytes()))
    for c in CHECKS:
        con.execute("INSERT INTO checks VALUES ('r1', ?, ?, ?, ?)", (c.checkpoint, c.name, int(c.passed), c.detail))
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_schema_2_store_migrates_with_numbers_intact(tmp_path, readonly):
    path = tmp_path / "natbench.sqlite"
    v2_store(path)
    with Store(path, readonly=readonly) as s:
        res = s.results()
        assert list(zip(res.checkpoint, res.attack, res.value)) == [(r.checkpoint, r.attack, r.value) for r in reversed(RESULTS)]
        assert list(res.columns)[-1] == "value"  # the run's own threat model: the frame every reader knew
        flags = s.flags("r1", "best")
        assert list(flags) == list(CORRECT) and all(np.array_equal(flags[a], c) for a, c in CORRECT.items())
        assert s.worst_case("r1", "best", ["clean", "pgd-20"]) == pytest.approx(0.5)
        assert s.checks("r1")["passed"].tolist() == [True, False]
        assert set(s.results(threat=None)["threat"]) == {""}
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 3
    pk = [r[1] for r in sorted(con.execute("PRAGMA table_info(results)"), key=lambda r: r[5]) if r[5]]
    assert pk == ["run_id", "checkpoint", "attack", "metric", "threat"]
    con.close()


def test_other_threat_model_is_stored_apart(tmp_path):
    with Store(tmp_path / "natbench.sqlite") as s:
        s.record_run(make_run(), RESULTS, FLAGS, CHECKS)
        l1 = threats.key("l1", 5.0)
        s.add_results("r1", [ResultRow("best", "clean", "accuracy", 0.9), ResultRow("best", "pgd-20", "accuracy", 0.1)],
                      [FlagRow("best", "clean", CORRECT["clean"]), FlagRow("best", "pgd-20", CORRECT["cw"])],
                      [CheckRow("best", "eps-ball", False, "l1 ball")], suite=["clean", "pgd-20"], threat=l1)
        own = s.results()
        assert list(zip(own.attack, own.value)) == [(r.attack, r.value) for r in RESULTS]  # untouched
        every = s.results(threat=None)
        assert every.loc[every["threat"] == l1, "value"].tolist() == [0.9, 0.1]
        assert s.results(threat=l1)["value"].tolist() == [0.9, 0.1]
        assert s.worst_case("r1", "best", ["clean", "pgd-20"]) == pytest.approx(0.5)
        assert s.worst_case("r1", "best", ["clean", "pgd-20"], threat=l1) == pytest.approx(0.5)  # clean & cw flags
        assert np.array_equal(s.flags("r1", "best", l1)["pgd-20"], CORRECT["cw"])
        assert s.checks("r1")["passed"].tolist() == [True, False] and s.checks("r1", l1)["detail"].tolist() == ["l1 ball"]
        assert s.get_run("r1").suite == ["clean", "pgd-20"] and s.attacks("r1", l1) == ["clean", "pgd-20"]
        # evaluating again under l1 replaces only l1's rows
        s.add_results("r1", [ResultRow("best", "pgd-20", "accuracy", 0.2)], [], [], suite=["pgd-20"], threat=l1)
        assert s.results(threat=l1)["value"].tolist() == [0.9, 0.2] and len(s.results()) == len(RESULTS)
        # a changed checkpoint file (eval --force) drops its rows under every threat model
        s.add_results("r1", [ResultRow("best", "clean", "accuracy", 0.5)], [], [], suite=["clean"], replace=["best"])
        assert s.results(threat=l1).empty and s.results().query("checkpoint == 'best'")["value"].tolist() == [0.5]


@pytest.mark.parametrize("text, expect", [("l1:5", ("l1", 5.0)), ("L2:0.5", ("l2", 0.5)), ("linf:8/255", ("linf", 8 / 255)),
                                          (" l2 : 0.25 ", ("l2", 0.25))])
def test_parse(text, expect):
    assert threats.parse(text) == pytest.approx(expect) and threats.parse(text)[0] == expect[0]


@pytest.mark.parametrize("text, match", [("l2", "NORM:EPS"), ("l3:1", "unknown norm"), ("l2:abc", "not a number"),
                                         ("l2:0", "> 0"), ("l1:-1", "> 0"), ("linf:8", "pixel range"), (":0.5", "NORM:EPS"),
                                         ("l2:", "NORM:EPS"), ("l2:nan", "not a number")])
def test_parse_errors_are_one_line(text, match):
    with pytest.raises(ConfigError, match=match) as e:
        threats.parse(text)
    assert "\n" not in str(e.value) and "--threat-model" in str(e.value)


def test_keys():
    assert threats.key(*threats.parse("linf:8/255")) == f"linf:{8 / 255!r}"
    assert threats.from_key(threats.key("l2", 0.5)) == ("l2", 0.5)
    own = threats.own({"task": {"threat_model": {"norm": "linf", "eps": 8 / 255}}})
    assert threats.stored_key(None, own) == "" and threats.stored_key(threats.parse("linf:8/255"), own) == ""
    assert threats.stored_key(("l1", 5.0), own) == "l1:5.0"
    assert threats.own({}) == ("linf", pytest.approx(float("nan"), nan_ok=True))
    assert threats.describe("l2", 0.5) == "L2 eps 0.5" and threats.describe("linf", 8 / 255) == "L-inf eps 8/255"


def test_facts_keep_the_suite_of_every_threat_model(tmp_path):
    """natbench.leaderboard_facts: the suite of each eval --threat-model is kept, merged key by key."""
    from types import SimpleNamespace

    from natbench.leaderboard_facts import get, threat_suite

    suite = lambda name, aid: SimpleNamespace(suite=name, attacks=[SimpleNamespace(id=aid, attack="autoattack")])  # noqa: E731
    with Store(tmp_path / "natbench.sqlite") as s:
        s.record_run(make_run(), RESULTS, FLAGS, CHECKS, facts={"metrics": ["accuracy"]})
        for key, name in (("l1:5.0", "aa-l1"), ("l2:0.5", "aa-l2")):
            s.add_results("r1", [ResultRow("best", "aa", "accuracy", 0.1)], [], [], suite=["aa"], threat=key,
                          facts={"metrics": ["accuracy"], **threat_suite(suite(name, "aa"), key)})
        got = get(s, "r1")
        assert got["threats"] == {"l1:5.0": {"suite": "aa-l1", "attacks": {"aa": "autoattack"}},
                                  "l2:0.5": {"suite": "aa-l2", "attacks": {"aa": "autoattack"}}}
        assert got["metrics"] == ["accuracy"]
