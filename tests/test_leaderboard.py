"""Tests for natbench.leaderboard: avg (suite attacks only), seed mean/std and 95 % intervals, column order,
headline sort, renderers, write."""
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


def shown(df):
    """The columns a reader sees in md/terminal: keys, seeds, values (no interval/std/provenance companions)."""
    return [c for c in df.columns if c in ("defense", "profile", "variant", "checkpoint", "seeds", "flags")
            or c in leaderboard.value_columns(df)]


def test_avg_by_hand_single_seed(store):
    add(store, "v", "vanilla", 0, {"best": {"clean": 0.80, "pgd-20": 0.50, "cw": 0.40},
                                   "last": {"clean": 0.90, "pgd-20": 0.10, "cw": 0.20}})
    df = leaderboard.table(store, "cifar10")
    assert shown(df) == ["defense", "profile", "checkpoint", "seeds", "clean", "pgd-20", "cw", "avg"]
    assert df["checkpoint"].tolist() == ["best", "last"]
    best, last = df.iloc[0], df.iloc[1]
    assert best["seeds"] == 1 and best["clean"] == 80.0 and best["pgd-20"] == 50.0
    # avg is the mean over the suite's attacks only: clean is never part of it (issue 12; it used to be
    # (80 + 50 + 40) / 3 = 56.67)
    assert best["avg"] == (50 + 40) / 2 == 45.0
    assert last["avg"] == 15.0
    assert df.attrs["avg_attacks"] == ["pgd-20", "cw"]


def test_mean_std_over_three_seeds(store):
    clean, pgd = [0.81, 0.83, 0.86], [0.47, 0.52, 0.50]
    for s in range(3):
        add(store, f"t{s}", "trades", s, {"best": {"clean": clean[s], "pgd-20": pgd[s]}})
    add(store, "v0", "vanilla", 0, {"best": {"clean": 0.95, "pgd-20": 0.0}})
    df = leaderboard.table(store, "cifar10")
    assert shown(df) == ["defense", "profile", "checkpoint", "seeds", "clean", "pgd-20", "avg"]
    assert [c for c in df.columns if c.startswith("clean")] == ["clean", "clean_lo", "clean_hi", "clean_std"]
    row = df[df.defense == "trades"].iloc[0]
    c, p = np.array(clean) * 100, np.array(pgd) * 100
    a = p  # avg over the attacks only
    assert row["seeds"] == 3
    assert row["clean"] == round(c.mean(), 2) and row["clean_std"] == round(c.std(ddof=1), 2)
    assert row["pgd-20"] == round(p.mean(), 2) and row["pgd-20_std"] == round(p.std(ddof=1), 2)
    assert row["avg"] == round(a.mean(), 2) and row["avg_std"] == round(a.std(ddof=1), 2)
    # no per-sample flags stored, so no test-set size: the interval is the t interval over the seeds
    # (scipy's, code nobody here wrote)
    from scipy import stats

    lo, hi = stats.t.interval(0.95, 2, loc=c.mean(), scale=stats.sem(c))
    assert (row["clean_lo"], row["clean_hi"]) == (round(lo, 2), round(hi, 2))
    van = df[df.defense == "vanilla"].iloc[0]
    assert van["seeds"] == 1 and np.isnan(van["clean_std"]) and np.isnan(van["clean_lo"])


def test_column_order_follows_suite_order(store):
    add(store, "a", "vanilla", 0, {"best": {"pgd-20": 0.1, "clean": 0.9, "aa": 0.0, "cw": 0.05}},
        suite=["clean", "pgd-20", "cw", "aa"])
    add(store, "b", "trades", 0, {"best": {"fgsm": 0.6, "clean": 0.8, "pgd-20": 0.5}},
        suite=["clean", "fgsm", "pgd-20"])
    df = leaderboard.table(store, "cifar10")
    assert shown(df) == ["defense", "profile", "checkpoint", "seeds", "clean", "pgd-20", "cw", "aa", "fgsm", "avg"]
    trades = df[df.defense == "trades"].iloc[0]
    assert np.isnan(trades["cw"]) and np.isnan(trades["aa"])
    # avg is over one attack set for every row (the first run's suite: pgd-20, cw, aa); trades lacks
    # two of them, so its avg is blank rather than a mean over other attacks (it used to be 63.33)
    assert df.attrs["avg_attacks"] == ["pgd-20", "cw", "aa"]
    assert np.isnan(trades["avg"])
    assert df.loc[df.defense == "vanilla", "avg"].item() == round((10 + 5 + 0) / 3, 2)


def test_rows_sorted_by_headline_robustness_not_by_name(store):
    """Rows are sorted by the headline robustness, descending: AutoAttack where the suite has it."""
    def run(run_id, defense, accs):
        cfg = {"suite": {"attacks": [{"id": "pgd-20", "attack": "pgd"}, {"id": "aa", "attack": "autoattack"}]}}
        rec = RunRecord(run_id=run_id, task="cifar10", defense=defense, profile="paper", seed=0, config_hash=f"h-{run_id}",
                        git_rev="g", versions={}, device="cpu", started=f"2024-01-01T00:00:{len(store.runs()):02d}Z",
                        finished="2024-01-01T01:00:00Z", wall_train_s=1.0, wall_eval_s=1.0, config=cfg,
                        suite=["clean", "pgd-20", "aa"])
        store.record_run(rec, [ResultRow(ck, a, "accuracy", v) for ck, d in accs.items() for a, v in d.items()], [], [])

    run("z", "amd", {"best": {"clean": 0.8, "pgd-20": 0.5, "aa": 0.45}, "last": {"clean": 0.8, "pgd-20": 0.6, "aa": 0.40}})
    run("y", "trades", {"best": {"clean": 0.7, "pgd-20": 0.55, "aa": 0.50}, "last": {"clean": 0.9, "pgd-20": 0.2, "aa": 0.1}})
    run("x", "vanilla", {"best": {"clean": 0.95, "pgd-20": 0.0, "aa": 0.0}})
    df = leaderboard.table(store, "cifar10")
    assert df.attrs["sort_by"] == "aa"
    assert list(zip(df.defense, df.checkpoint)) == [
        ("trades", "best"), ("amd", "best"), ("amd", "last"), ("trades", "last"), ("vanilla", "best")]


def test_rows_without_autoattack_sorted_by_worst_case(store):
    from natbench.store import FlagRow

    def run(run_id, defense, flags):
        rec = RunRecord(run_id=run_id, task="cifar10", defense=defense, profile="paper", seed=0, config_hash=f"h-{run_id}",
                        git_rev="g", versions={}, device="cpu", started=f"2024-01-01T00:00:{len(store.runs()):02d}Z",
                        finished="2024-01-01T01:00:00Z", wall_train_s=1.0, wall_eval_s=1.0, config={}, suite=list(flags))
        store.record_run(rec, [ResultRow("best", a, "accuracy", float(np.mean(f))) for a, f in flags.items()],
                         [FlagRow("best", a, np.array(f, bool)) for a, f in flags.items()], [])

    run("a", "aaa", {"clean": [1, 1, 1, 1], "fgsm": [1, 1, 0, 0], "pgd-20": [0, 0, 1, 1]})  # worst case 0 %
    run("b", "bbb", {"clean": [1, 1, 1, 0], "fgsm": [1, 0, 1, 0], "pgd-20": [1, 0, 1, 0]})  # worst case 50 %
    df = leaderboard.table(store, "cifar10")
    assert df.attrs["sort_by"] == "worst-case" and df["defense"].tolist() == ["bbb", "aaa"]


def test_csv_parses_back(store):
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9, "pgd-20": 0.1}}, suite=["clean", "pgd-20", "cw"])
    add(store, "b", "trades", 0, {"best": {"clean": 0.8, "pgd-20": 0.5, "cw": 0.45}},
        suite=["clean", "pgd-20", "cw"])
    df = leaderboard.table(store, "cifar10")
    text = leaderboard.render(df, "csv")
    back = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
    assert list(back.columns) == list(df.columns)
    assert shown(back) == ["defense", "profile", "checkpoint", "seeds", "clean", "pgd-20", "cw", "avg"]
    assert back.loc[back.defense == "trades", "cw"].item() == 45.0
    assert np.isnan(back.loc[back.defense == "vanilla", "cw"].item())  # missing -> empty cell
    assert np.isnan(back.loc[back.defense == "vanilla", "avg"].item())  # the suite's cw is missing: no avg
    assert back.loc[back.defense == "trades", "avg"].item() == 47.5


def test_csv_keeps_std_columns(store):
    for s in range(2):
        add(store, f"t{s}", "trades", s, {"best": {"clean": 0.8 + s / 100}})
    back = pd.read_csv(io.StringIO(leaderboard.render(leaderboard.table(store, "cifar10"), "csv")))
    assert [c for c in back.columns if c.startswith("clean")] == ["clean", "clean_lo", "clean_hi", "clean_std"]
    assert back["clean_std"].item() == round(np.std([80, 81], ddof=1), 2)


def test_md_plus_minus_only_with_an_interval(store, tmp_path):
    """``±`` in md is the larger half of the cell's 95 % interval; without flags (no test-set size) and
    with one seed there is none."""
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9, "pgd-20": 0.1}})
    md = leaderboard.render(leaderboard.table(store, "cifar10"), "md")
    assert "±" not in md
    lines = md.strip().splitlines()
    assert lines[0] == "| defense | profile | checkpoint | seeds | clean | pgd-20 | avg |"
    assert lines[2] == "| vanilla | paper | best | 1 | 90.00 | 10.00 | 10.00 |"

    with Store(tmp_path / "two.sqlite") as two:
        for s in range(2):
            add(two, f"t{s}", "trades", s, {"best": {"clean": 0.8 + s / 100, "pgd-20": 0.5}})
        add(two, "v", "vanilla", 0, {"best": {"clean": 0.9, "pgd-20": 0.1}})
        md = leaderboard.render(leaderboard.table(two, "cifar10"), "md")
    assert "±" in md and "_std" not in md and "_lo" not in md and "run_ids" not in md
    from scipy import stats

    half = stats.t.ppf(0.975, 1) * np.std([80, 81], ddof=1) / np.sqrt(2)  # 6.35: two seeds are a wide interval
    assert f"| trades | paper | best | 2 | 80.50 ± {half:.2f} | 50.00 ± 0.00 | 50.00 ± 0.00 |" in md
    assert "| vanilla | paper | best | 1 | 90.00 | 10.00 | 10.00 |" in md


def test_json_and_html(store):
    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9}, "last": {"clean": 0.8, "pgd-20": 0.2}})
    df = leaderboard.table(store, "cifar10")
    recs = json.loads(leaderboard.render(df, "json"))
    best = next(r for r in recs if r["checkpoint"] == "best")
    assert {k: best[k] for k in shown(df)} == {"defense": "vanilla", "profile": "paper", "checkpoint": "best", "seeds": 1,
                                               "clean": 90.0, "pgd-20": None, "avg": None}
    assert best["run_ids"] == "a" and best["clean_lo"] is None
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
    # the profile column is always there: a quick-profile row is never mistaken for a full one
    assert only["profile"].tolist() == ["smoke"] and only["clean"].tolist() == [50.0]


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
    assert df["avg"].tolist() == [(60 + 80) / 2]  # neither clean nor worst-case is part of avg
    # 5 test points (the flags' length): Wilson intervals, checked against scipy's (code nobody here wrote)
    from scipy import stats

    assert df["n_test"].tolist() == [5]
    for col, k in (("clean", 4), ("pgd-20", 3), ("worst-case", 2)):
        ci = stats.binomtest(k, 5).proportion_ci(method="wilson")
        assert (df[f"{col}_lo"].item(), df[f"{col}_hi"].item()) == (round(100 * ci.low, 2), round(100 * ci.high, 2))
    assert np.isnan(df["avg_lo"].item())  # a mean of correlated proportions, one seed: no interval


def test_a_row_keeps_only_the_attacks_every_seed_has_and_escalations_enter_worst_case(store):
    """AutoAttack added to one seed only (natbench eval) is left out of the multi-seed row, so avg and
    worst-case do not mix suites; an escalated attack of one run stays in that run's worst case."""
    from natbench.store import FlagRow

    def rec(run_id, seed, accs, flags):
        run = RunRecord(run_id=run_id, task="cifar10", defense="pgd-at", profile="paper", seed=seed,
                        config_hash=f"h-{run_id}", git_rev="g", versions={}, device="cpu",
                        started=f"2024-01-01T00:00:0{seed}Z", finished="2024-01-01T01:00:00Z",
                        wall_train_s=1.0, wall_eval_s=1.0, config={"suite": {"attacks": [{"id": "pgd-20", "attack": "pgd"}]}},
                        suite=list(accs))  # the configured suite is pgd-20; aa came later (natbench eval)
        store.record_run(run, [ResultRow("best", a, "accuracy", v) for a, v in accs.items()],
                         [FlagRow("best", a, np.array(f, dtype=bool)) for a, f in flags.items()], [])

    rec("s0", 0, {"clean": 0.75, "pgd-20": 0.5, "aa": 0.25},
        {"clean": [1, 1, 1, 0], "pgd-20": [1, 1, 0, 0], "aa": [1, 0, 0, 0]})
    rec("s1", 1, {"clean": 1.0, "pgd-20": 0.75, "escalated-square": 0.25},
        {"clean": [1, 1, 1, 1], "pgd-20": [1, 1, 1, 0], "escalated-square": [0, 0, 1, 0]})
    row = leaderboard.table(store, "cifar10").iloc[0]
    assert np.isnan(row["aa"])  # only seed 0 has it
    assert row["avg"] == np.mean([50, 75])  # the configured suite's attacks only: pgd-20
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
    assert shown(df) == ["defense", "profile", "checkpoint", "seeds", "clean mAP", "clean rank1", "sma-8 mAP", "sma-8 rank1",
                         "fna-8 mAP", "fna-8 rank1", "avg mAP", "avg rank1", "worst-case rank1"]
    assert "worst-case rank1_lo" in df.columns and "norm" in df.columns
    row = df.iloc[0]
    assert row["sma-8 mAP"] == 60.0 and row["fna-8 rank1"] == 25.0
    assert row["avg mAP"] == 50.0 and row["avg rank1"] == 37.5 and row["worst-case rank1"] == 25.0  # avg: attacks only
    assert np.isnan(row["clean mAP_lo"]) and not np.isnan(row["clean rank1_lo"])  # mAP is not a proportion of points
    assert df.attrs["metric"] == "mAP/rank1"
    assert shown(leaderboard.table(store, "reid_market", "mAP"))[4:] == ["clean", "sma-8", "fna-8", "avg"]


def _record(store, r, accs, *, flags=None, finished="2024-01-01T01:00:00Z"):
    """Record a run resolved by natbench.resolve (its real config) with the given results."""
    from natbench.store import FlagRow

    run = RunRecord(run_id=r.run_id, task=r.task, defense=r.defense, profile=r.profile_name, seed=r.seed,
                    config_hash=r.config_hash, git_rev="g", versions={"natbench": "0.1.0"}, device="cpu",
                    started=f"2024-01-01T00:00:{len(store.runs()):02d}Z", finished=finished, wall_train_s=1.0,
                    wall_eval_s=1.0, config=r.config, suite=list(accs), variant=r.variant)
    store.record_run(run, [ResultRow("best", a, "accuracy", v) for a, v in accs.items()],
                     [FlagRow("best", a, np.array(f, bool)) for a, f in (flags or {}).items()], [])


def test_a_spec_of_ones_own_under_a_builtin_name_is_a_variant_row(store, tmp_path):
    """The observed case: a spec that includes digits.yaml, keeps ``task: digits`` and sets eps 0.1 was
    averaged with the built-in digits run as "pgd-at | seeds 2". A row aggregates only runs that differ
    in seed: the spec's run is its own row whose variant says what differs from the built-in."""
    from natbench.registry import get_registry
    from natbench.resolve import resolve

    mine = tmp_path / "digits_eps01.yaml"
    mine.write_text("include: digits.yaml\ntask: digits\nthreat_model:\n  eps: 0.1\n")
    reg = get_registry()
    builtin = resolve(reg, "digits", "pgd-at", profile="quick", seed=0)
    own = resolve(reg, str(mine), "pgd-at", profile="quick", seed=0)
    assert own.task == builtin.task == "digits" and own.variant == builtin.variant == ""  # what used to merge them
    builtin1 = resolve(reg, "digits", "pgd-at", profile="quick", seed=1)
    _record(store, builtin, {"clean": 0.85, "pgd-20": 0.60})
    _record(store, builtin1, {"clean": 0.83, "pgd-20": 0.58})
    _record(store, own, {"clean": 0.93, "pgd-20": 0.85})
    # eps 0.1 is another threat model: its own table (issue 16: a table never mixes eps), in eps order
    frames = leaderboard.tables(store, "digits")
    assert [f.attrs["threat_title"] for f in frames] == ["L-inf eps 0.1", "L-inf eps 0.2"]
    assert [f["variant"].tolist() if "variant" in f else [""] for f in frames] == [["threat_model.eps=0.1"], [""]]
    df = pd.concat(frames).fillna({"variant": ""}).set_index("variant")
    assert sorted(df.index) == ["", "threat_model.eps=0.1"]
    assert df.loc["", "seeds"] == 2 and df.loc["threat_model.eps=0.1", "seeds"] == 1
    assert df.loc["threat_model.eps=0.1", "clean"] == 93.0 and df.loc["", "clean"] == 84.0
    # the exports say what each row was measured under (and which runs it holds)
    back = pd.read_csv(io.StringIO(leaderboard.render(df.reset_index(), "csv")), keep_default_na=False)
    assert "trained" not in back.columns  # each run is in the table of the threat model it was trained under
    assert {"profile", "norm", "eps", "epochs", "n_test", "natbench", "run_ids"} <= set(back.columns)
    rows = back.set_index("variant")
    assert rows.loc["threat_model.eps=0.1", "eps"] == 0.1 and rows.loc["", "eps"] == 0.2
    assert (rows["profile"] == "quick").all() and (rows["epochs"] == 3).all() and (rows["norm"] == "linf").all()
    assert rows.loc["", "run_ids"] == " ".join(sorted([builtin.run_id, builtin1.run_id]))
    assert rows.loc["", "natbench"] == "0.1.0"
    recs = json.loads(leaderboard.render(df.reset_index(), "json"))
    assert {r["variant"]: r["eps"] for r in recs} == {"": 0.2, "threat_model.eps=0.1": 0.1}
    assert {type(r["epochs"]) for r in recs} == {int}  # counts print as 3, not 3.0


def test_two_specs_under_one_unregistered_name_are_never_averaged(store, tmp_path):
    from natbench.registry import get_registry
    from natbench.resolve import resolve

    reg = get_registry()
    runs = []
    for eps in ("0.1", "0.15"):
        path = tmp_path / f"t{eps}.yaml"
        path.write_text(f"include: digits\ntask: mytask\nthreat_model:\n  eps: {eps}\n")
        runs.append(resolve(reg, str(path), "vanilla", profile="quick", seed=0))
    for r, acc in zip(runs, (0.9, 0.8)):
        _record(store, r, {"clean": acc})
    frames = leaderboard.tables(store, "mytask")  # two eps: two threat models, two tables (issue 16)
    assert [f["seeds"].tolist() for f in frames] == [[1], [1]] and [f["eps"].tolist() for f in frames] == [[0.1], [0.15]]
    assert [f["clean"].tolist() for f in frames] == [[90.0], [80.0]]


def test_written_files_get_the_users_umask(store, tmp_path):
    import os
    import stat

    add(store, "a", "vanilla", 0, {"best": {"clean": 0.9}})
    old = os.umask(0o002)
    try:
        paths = leaderboard.write(store, tmp_path / "lb")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o664}  # mkstemp's 0600 before


def test_detection_worst_case_is_the_minimum_over_attacks(store):
    """Detection's mAP is not per sample: its worst case is the minimum over the attacks (RAP raising
    mAP above clean on a defended model is never the "robust" value), used by the scatter too."""
    cfg = {"task": {"kind": "detection", "threat_model": {"norm": "linf", "eps": 8 / 255}},
           "suite": {"attacks": [{"id": a, "attack": a} for a in ("det-cls", "det-loc", "dag", "rap")]}}
    for run_id, defense, vals in (("d0", "mtd", (0.9221, 0.40, 0.55, 0.60, 0.9345)), ("d1", "vanilla", (0.95, 0.05, 0.2, 0.1, 0.5))):
        run = RunRecord(run_id=run_id, task="voc", defense=defense, profile="quick", seed=0, config_hash=f"h{run_id}",
                        git_rev="g", versions={}, device="cpu", started=f"2024-01-01T00:00:0{run_id[1]}Z",
                        finished="2024-01-01T01:00:00Z", wall_train_s=1.0, wall_eval_s=1.0, config=cfg,
                        suite=["clean", "det-cls", "det-loc", "dag", "rap"])
        names = ("clean", "det-cls", "det-loc", "dag", "rap")
        store.record_run(run, [ResultRow("best", a, "mAP", v) for a, v in zip(names, vals)], [], [])
    df = leaderboard.table(store, "voc")
    assert df.attrs["metric"] == "mAP"
    assert df["defense"].tolist() == ["mtd", "vanilla"] and df.attrs["sort_by"] == "worst-case"
    assert df["worst-case"].tolist() == [40.0, 5.0]
    assert df["avg"].tolist() == [round((40 + 55 + 60 + 93.45) / 4, 2), round((5 + 20 + 10 + 50) / 4, 2)]
    assert np.isnan(df["worst-case_lo"]).all()  # one seed and no per-sample outcomes: no interval
    points, _, _ = leaderboard.scatter_points(df)
    assert [(p["x"], p["y"], p["column"]) for p in points] == [(92.21, 40.0, "worst-case"), (95.0, 5.0, "worst-case")]


def test_reid_worst_case_per_eps(store):
    """Re-id's suite attacks at 8/255 and 10/255: one worst case per eps, named by metric and eps."""
    from natbench.store import FlagRow

    ids = ("sma-8", "sma-10", "fna-8", "fna-10")
    cfg = {"task": {"kind": "reid", "threat_model": {"norm": "linf", "eps": 8 / 255}},
           "suite": {"attacks": [{"id": a, "attack": a.split("-")[0], "params": {"eps": f"{a.split('-')[1]}/255"}} for a in ids]}}
    run = RunRecord(run_id="r", task="reid_market", defense="amd", profile="quick", seed=0, config_hash="h", git_rev="g",
                    versions={}, device="cpu", started="2024-01-01T00:00:00Z", finished="2024-01-01T01:00:00Z",
                    wall_train_s=3.0, wall_eval_s=1.0, config=cfg, suite=["clean", *ids])
    flags = {"clean": [1, 1, 1, 1], "sma-8": [1, 1, 1, 0], "fna-8": [1, 1, 0, 1], "sma-10": [1, 0, 0, 1], "fna-10": [0, 0, 1, 1]}
    rows = [ResultRow("best", a, m, float(np.mean(f))) for a, f in flags.items() for m in ("mAP", "rank1")]
    store.record_run(run, rows, [FlagRow("best", a, np.array(f, bool)) for a, f in flags.items()], [])
    row = leaderboard.table(store, "reid_market").iloc[0]
    assert row["worst-case rank1 @8/255"] == 50.0  # samples 0 and 1 survive sma-8 and fna-8
    assert row["worst-case rank1 @10/255"] == 25.0  # only sample 3 survives sma-10 and fna-10


def test_avg_is_the_same_attack_set_for_best_and_last(store):
    """The observed case: ``natbench eval --suite paper-table6 --checkpoint best`` added four attacks to
    best only, and best and last then averaged different sets. avg is over the configured suite."""
    cfg = {"suite": {"attacks": [{"id": "pgd-20", "attack": "pgd"}, {"id": "cw-inf", "attack": "cw-inf"}]}}
    run = RunRecord(run_id="n", task="digits", defense="pgd-at+nat", profile="default", seed=0, config_hash="hn", git_rev="g",
                    versions={}, device="cpu", started="2024-01-01T00:00:00Z", finished="2024-01-01T01:00:00Z",
                    wall_train_s=1.0, wall_eval_s=1.0, config=cfg, suite=["clean", "pgd-20", "cw-inf", "adaptive-apgd-10"])
    accs = {"best": {"clean": 0.9, "pgd-20": 0.6, "cw-inf": 0.5, "adaptive-apgd-10": 0.1},
            "last": {"clean": 0.8, "pgd-20": 0.4, "cw-inf": 0.3}}
    store.record_run(run, [ResultRow(ck, a, "accuracy", v) for ck, d in accs.items() for a, v in d.items()], [], [])
    df = leaderboard.table(store, "digits").set_index("checkpoint")
    assert df.attrs["avg_attacks"] == ["pgd-20", "cw-inf"]
    assert df.loc["best", "avg"] == 55.0 and df.loc["last", "avg"] == 35.0  # best's adaptive-apgd-10 is not in it
    assert df.loc["best", "adaptive-apgd-10"] == 10.0 and np.isnan(df.loc["last", "adaptive-apgd-10"])


def test_rows_evaluated_with_another_suite_are_labelled(store):
    """cifar10's quick profile evaluates with the light `smoke` suite by default: its rows say so in a
    `suite` column next to the full-suite rows, and the md preamble names the suites. A table whose rows
    share one suite keeps its columns (the suite is named in the titles only)."""
    from natbench.registry import get_registry
    from natbench.resolve import resolve

    reg = get_registry()
    quick = resolve(reg, "cifar10", "vanilla", profile="quick")
    paper = resolve(reg, "cifar10", "pgd-at", profile="paper")
    assert quick.suite.suite == "smoke" and paper.suite.suite == "paper-whitebox"
    _record(store, quick, {"clean": 0.9, "pgd-20": 0.0})
    _record(store, paper, {"clean": 0.8, "pgd-20": 0.5})
    df = leaderboard.table(store, "cifar10")
    assert df.set_index("defense")["suite"].to_dict() == {"vanilla": "smoke", "pgd-at": "paper-whitebox"}
    assert "suite" not in leaderboard.value_columns(df) and df.attrs["suites"] == ["paper-whitebox", "smoke"]
    assert "Suites paper-whitebox, smoke." in leaderboard.md_preamble(df)
    back = pd.read_csv(io.StringIO(leaderboard.render(df, "csv")), keep_default_na=False)
    assert list(back.columns).index("suite") == list(back.columns).index("run_ids") - 1
    one = resolve(reg, "digits", "vanilla", profile="quick")
    _record(store, one, {"clean": 0.9, "pgd-20": 0.1})
    digits = leaderboard.table(store, "digits")
    assert "suite" not in digits.columns and digits.attrs["suites"] == ["digits"]
    assert leaderboard.md_preamble(digits).endswith("Suite digits.")
