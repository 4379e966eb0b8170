"""Tests for natbench.leaderboard: avg, seed mean/std, column order, renderers, write."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from natbench import leaderboard
from natbench.errors import ConfigError, RunError
from natbench.store import ResultRow, RunRecord, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "natbench.sqlite")
    yield s
    s.close()


def add(store, run_id, defense, seed, accs, *, suite=None, task="cifar10", profile="paper",
        metric="accuracy"):
    """Record one run; ``accs`` maps checkpoint -> {attack: fraction}."""
    suite = suite or list(next(iter(accs.values())))
    run = RunRecord(run_id=run_id, task=task, defense=defense, profile=profile, seed=seed,
                    config_hash=f"hash-{run_id}", git_rev="g", versions={}, device="cpu",
                    started=f"2024-01-01T00:00:{len(store.runs()):02d}Z", finished="2024-01-01T01:00:00Z",
                    wall_train_s=1.0, wall_eval_s=1.0, config={}, suite=suite)
    rows = [ResultRow(ck, a, metric, v) for ck, d in accs.items() for a, v in d.items()]
    store.record_run(run, rows, [], [])


def test_avg_by_hand_single_seed(store):
    add(store, "v", "vanilla", 0, {"best": {"clean": 0.80, "pgd-20": 0.50, "cw": 0.40},
                                   "last": {"clean": 0.90, "pgd-20": 0.10, "cw": 0.20}})
    df = leaderboard.table(store, "cifar10")
    assert list(df.columns) == ["defense", "checkpoint", "seeds", "clean", "pgd-20", "cw", "avg"]
    assert df["checkpoint"].tolist() == ["best", "last"]
    best, last = df.iloc[0], df.iloc[1]
    assert best["seeds"] == 1 and best["clean"] == 80.0 and best["pgd-20"] == 50.0
    assert best["avg"] == round((80 + 50 + 40) / 3, 2) == 56.67
    assert last["avg"] == 40.0


def test_mean_std_over_three_seeds(store):
    clean, pgd = [0.81, 0.83, 0.86], [0.47, 0.52, 0.50]
    for s in range(3):
        add(store, f"t{s}", "trades", s, {"best": {"clean": clean[s], "pgd-20": pgd[s]}})
    add(store, "v0", "vanilla", 0, {"best": {"clean": 0.95, "pgd-20": 0.0}})
    df = leaderboard.table(store, "cifar10")
    assert list(df.columns) == ["defense", "checkpoint", "seeds", "clean", "clean_std", "pgd-20",
                                "pgd-20_std", "avg", "avg_std"]
    row = df[df.defense == "trades"].iloc[0]
    c, p = np.array(clean) * 100, np.array(pgd) * 100
    a = (c + p) / 2
    assert row["seeds"] == 3
    assert row["clean"] == round(c.mean(), 2) and row["clean_std"] == round(c.std(ddof=1), 2)
    assert row["pgd-20"] == round(p.mean(), 2) and row["pgd-20_std"] == round(p.std(ddof=1), 2)
    assert row["avg"] == round(a.mean(), 2) and row["avg_std"] == round(a.std(ddof=1), 2)
    van = df[df.defense == "vanilla"].iloc[0]
    assert van["seeds"] == 1 and np.isnan(van["clean_std"])


def test_column_order_follows_suite_order(store):
    add(store, "a", "vanilla", 0, {"best": {"pgd-20": 0.1, "clean": 0.9, "aa": 0.0, "cw": 0.05}},
        suite=["clean", "pgd-20", "cw", "aa"])
    add(store, "b", "trades", 0, {"best": {"fgsm": 0.6, "clean": 0.8, "pgd-20": 0.5}},
        suite=["clean", "fgsm", "pgd-20"])
    df = leaderboard.table(store, "cifar10")
    assert list(df.columns) == ["defense", "checkpoint", "seeds", "clean", "pgd-20", "cw", "aa",
                                "fgsm", "avg"]
    trades = df[df.defense == "trades"].iloc[0]
    assert np.isnan(trades["cw"]) and np.isnan(trades["aa"])
    assert trades["avg"] == round((80 + 60 + 50) / 3, 2)  # over the attacks the row has


def test_rows_sorted_by_defense_then_checkpoint(store):
    add(store, "z", "trades", 0, {"last": {"clean": 0.5}, "best": {"clean": 0.6}})
    add(store, "y", "amd+nat", 0, {"last": {"clean": 0.7}, "best": {"clean": 0.8}})
    df = leaderboard.table(store, "cifar10")
    assert list(zip(df.defense, df.checkpoint)) == [
        ("amd+nat", "best"), ("amd+nat", "last"), ("trades", "best"), ("trades", "last")]


def test_csv_parses_back(store):
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9, "pgd-20": 0.1}}, suite=["clean", "pgd-20", "cw"])
    add(store, "b", "trades", 0, {"best": {"clean": 0.8, "pgd-20": 0.5, "cw": 0.45}},
        suite=["clean", "pgd-20", "cw"])
    text = leaderboard.render(leaderboard.table(store, "cifar10"), "csv")
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns) == ["defense", "checkpoint", "seeds", "clean", "pgd-20", "cw", "avg"]
    assert back.loc[back.defense == "trades", "cw"].item() == 45.0
    assert np.isnan(back.loc[back.defense == "vanilla", "cw"].item())  # missing -> empty cell
    assert "vanilla,best,1,90.0,10.0,,50.0" in text.splitlines()


def test_csv_keeps_std_columns(store):
    for s in range(2):
        add(store, f"t{s}", "trades", s, {"best": {"clean": 0.8 + s / 100}})
    back = pd.read_csv(io.StringIO(leaderboard.render(leaderboard.table(store, "cifar10"), "csv")))
    assert list(back.columns) == ["defense", "checkpoint", "seeds", "clean", "clean_std", "avg",
                                  "avg_std"]


def test_md_plus_minus_only_with_several_seeds(store, tmp_path):
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9, "pgd-20": 0.1}})
    md = leaderboard.render(leaderboard.table(store, "cifar10"), "md")
    assert "±" not in md
    lines = md.strip().splitlines()
    assert lines[0] == "| defense | checkpoint | seeds | clean | pgd-20 | avg |"
    assert lines[2] == "| vanilla | best | 1 | 90.00 | 10.00 | 50.00 |"

    with Store(tmp_path / "two.sqlite") as two:
        for s in range(2):
            add(two, f"t{s}", "trades", s, {"best": {"clean": 0.8 + s / 100, "pgd-20": 0.5}})
        add(two, "v", "vanilla", 0, {"best": {"clean": 0.9, "pgd-20": 0.1}})
        md = leaderboard.render(leaderboard.table(two, "cifar10"), "md")
    assert "±" in md and "_std" not in md
    assert "| trades | best | 2 | 80.50 ± 0.71 | 50.00 ± 0.00 | 65.25 ± 0.35 |" in md
    assert "| vanilla | best | 1 | 90.00 | 10.00 | 50.00 |" in md


def test_json_and_html(store):
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9}, "last": {"clean": 0.8, "pgd-20": 0.2}})
    df = leaderboard.table(store, "cifar10")
    recs = json.loads(leaderboard.render(df, "json"))
    assert recs[0] == {"defense": "vanilla", "checkpoint": "best", "seeds": 1, "clean": 90.0,
                       "pgd-20": None, "avg": 90.0}
    page = leaderboard.render(df, "html")
    assert page.startswith("<!doctype html>") and "<table>" in page and "cifar10" in page
    assert page.count("<tr>") == 3


def test_errors(store):
    with pytest.raises(RunError, match=r"No results for task 'x' in .*natbench run --task x --defense vanilla"):
        leaderboard.table(store, "x")
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9}})
    with pytest.raises(RunError, match="rank1"):
        leaderboard.table(store, "cifar10", metric="rank1")
    with pytest.raises(ConfigError, match="xml"):
        leaderboard.render(leaderboard.table(store, "cifar10"), "xml")


def test_rerun_of_same_config_counts_once(store):
    add(store, "old", "vanilla", 0, {"best": {"clean": 0.5}})
    add(store, "new", "vanilla", 0, {"best": {"clean": 0.7}})
    import sqlite3

    con = sqlite3.connect(store.path)
    with con:
        con.execute("UPDATE runs SET config_hash = 'same', finished = started")
    con.close()
    df = leaderboard.table(store, "cifar10")
    assert df["seeds"].tolist() == [1] and df["clean"].tolist() == [70.0]


def test_profiles_are_not_pooled(store):
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9}}, profile="paper")
    add(store, "b", "vanilla", 0, {"best": {"clean": 0.5}}, profile="smoke")
    df = leaderboard.table(store, "cifar10")
    assert list(df.columns[:4]) == ["defense", "profile", "checkpoint", "seeds"]
    assert df["seeds"].tolist() == [1, 1]
    only = leaderboard.table(store, "cifar10", profile="smoke")
    assert "profile" not in only.columns and only["clean"].tolist() == [50.0]


def test_tasks_and_write(store, tmp_path):
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9}}, task="digits")
    add(store, "b", "vanilla", 0, {"best": {"clean": 0.8}}, task="cifar10")
    assert leaderboard.tasks(store) == ["cifar10", "digits"]
    out = tmp_path / "leaderboards"
    paths = leaderboard.write(store, out)
    assert sorted(p.name for p in paths) == sorted(
        f"{t}.{f}" for t in ("cifar10", "digits") for f in ("md", "csv", "json"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no tmp left
    assert pd.read_csv(out / "digits.csv")["clean"].tolist() == [90.0]
    assert "do not edit" in (out / "digits.md").read_text()
    assert [p.name for p in leaderboard.write(store, out, task="digits")] == [
        "digits.md", "digits.csv", "digits.json"]


def test_write_empty_store_raises(store, tmp_path):
    with pytest.raises(RunError, match="No results"):
        leaderboard.write(store, tmp_path / "lb")


def test_worst_case_and_flags_columns(store):
    from natbench.store import CheckRow, FlagRow

    run = RunRecord(run_id="w", task="cifar10", defense="pgd-at", profile="paper", seed=0, config_hash="hw",
                    git_rev="g", versions={}, device="cpu", started="2024-01-01T00:00:00Z",
                    finished="2024-01-01T01:00:00Z", wall_train_s=1.0, wall_eval_s=1.0, config={},
                    suite=["clean", "pgd-20", "aa"])
    correct = {"clean": np.array([1, 1, 1, 1, 0], bool), "pgd-20": np.array([1, 1, 0, 1, 0], bool),
               "aa": np.array([1, 0, 1, 1, 1], bool)}
    rows = [ResultRow("best", a, "accuracy", float(c.mean())) for a, c in correct.items()]
    store.record_run(run, rows, [FlagRow("best", a, c) for a, c in correct.items()],
                     [CheckRow("best", "more_steps_not_weaker", False, "pgd-20 weaker"),
                      CheckRow("best", "clean_is_upper_bound", True, "ok")])
    df = leaderboard.table(store, "cifar10")
    assert df["worst-case"].tolist() == [40.0]  # samples 0 and 3 survive clean, pgd-20 and aa
    assert df["flags"].tolist() == ["! more_steps_not_weaker (docs/flags.md)"]
    assert df["avg"].tolist() == [round((80 + 60 + 80) / 3, 2)]  # worst-case is not part of avg


def test_a_row_keeps_only_the_attacks_every_seed_has_and_escalations_enter_worst_case(store):
    """AutoAttack added to one seed only (natbench eval) is left out of the multi-seed row, so avg and
    worst-case do not mix suites; an escalated attack of one run stays in that run's worst case."""
    from natbench.store import FlagRow

    def rec(run_id, seed, accs, flags):
        run = RunRecord(run_id=run_id, task="cifar10", defense="pgd-at", profile="paper", seed=seed,
                        config_hash=f"h-{run_id}", git_rev="g", versions={}, device="cpu",
                        started=f"2024-01-01T00:00:0{seed}Z", finished="2024-01-01T01:00:00Z",
                        wall_train_s=1.0, wall_eval_s=1.0, config={}, suite=list(accs))
        store.record_run(run, [ResultRow("best", a, "accuracy", v) for a, v in accs.items()],
                         [FlagRow("best", a, np.array(f, dtype=bool)) for a, f in flags.items()], [])

    rec("s0", 0, {"clean": 0.75, "pgd-20": 0.5, "aa": 0.25},
        {"clean": [1, 1, 1, 0], "pgd-20": [1, 1, 0, 0], "aa": [1, 0, 0, 0]})
    rec("s1", 1, {"clean": 1.0, "pgd-20": 0.75, "escalated-square": 0.25},
        {"clean": [1, 1, 1, 1], "pgd-20": [1, 1, 1, 0], "escalated-square": [0, 0, 1, 0]})
    row = leaderboard.table(store, "cifar10").iloc[0]
    assert np.isnan(row["aa"])  # only seed 0 has it
    assert row["avg"] == round(np.mean([(75 + 50) / 2, (100 + 75) / 2]), 2)  # clean and pgd-20 only
    assert row["escalated-square"] == 25.0  # shown for the run that has it
    # worst case: seed 0 over clean, pgd-20 (2/4 = 50 %); seed 1 also over its escalation (1/4)
    assert row["worst-case"] == round((50 + 25) / 2, 2)


def test_bf16_evaluations_are_flagged(store):
    add(store, "a", "pgd-at", 0, {"best": {"clean": 0.9, "pgd-20": 0.5}})
    add(store, "b", "trades", 0, {"best": {"clean": 0.8, "pgd-20": 0.5}})
    store.add_results("b", [ResultRow("best", "pgd-20", "bf16_autocast", 1.0)], [], [], suite=["clean", "pgd-20"])
    df = leaderboard.table(store, "cifar10").set_index("defense")
    assert df.loc["trades", "flags"] == "! bf16_eval (docs/flags.md)" and df.loc["pgd-at", "flags"] == ""


def test_reid_leaderboard_has_map_and_rank1_per_attack(store):
    """A re-id run's task kind asks for mAP and rank-1 (ReIDTask.LEADERBOARD_METRICS): one column of
    each per attack, ``avg`` per metric, the worst case (rank-1 flags) once."""
    from natbench.store import FlagRow

    run = RunRecord(run_id="r", task="reid_market", defense="amd", profile="quick", seed=0, config_hash="h",
                    git_rev="g", versions={}, device="cpu", started="2024-01-01T00:00:00Z",
                    finished="2024-01-01T01:00:00Z", wall_train_s=1.0, wall_eval_s=1.0,
                    config={"task": {"kind": "reid"}}, suite=["clean", "sma-8", "fna-8"])
    vals = {"clean": (0.8, 0.75), "sma-8": (0.6, 0.5), "fna-8": (0.4, 0.25)}
    rows = [ResultRow("best", a, m, v) for a, (mp, r1) in vals.items() for m, v in (("mAP", mp), ("rank1", r1))]
    flags = [FlagRow("best", "clean", np.array([1, 1, 1, 0], bool)), FlagRow("best", "sma-8", np.array([1, 1, 0, 0], bool)),
             FlagRow("best", "fna-8", np.array([1, 0, 1, 0], bool))]
    store.record_run(run, rows, flags, [])
    assert leaderboard.task_metrics(store, "reid_market") == ("mAP", "rank1")
    df = leaderboard.table(store, "reid_market")
    assert list(df.columns) == ["defense", "checkpoint", "seeds", "clean mAP", "clean rank1", "sma-8 mAP", "sma-8 rank1",
                                "fna-8 mAP", "fna-8 rank1", "avg mAP", "avg rank1", "worst-case rank1"]
    row = df.iloc[0]
    assert row["sma-8 mAP"] == 60.0 and row["fna-8 rank1"] == 25.0
    assert row["avg mAP"] == 60.0 and row["avg rank1"] == 50.0 and row["worst-case rank1"] == 25.0
    assert df.attrs["metric"] == "mAP/rank1"
    assert leaderboard.table(store, "reid_market", "mAP").columns.tolist()[3:] == ["clean", "sma-8", "fna-8", "avg"]
