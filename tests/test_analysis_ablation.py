"""The ablation table read back from a hand-filled store, the attack-budget estimate, and their plots."""
from __future__ import annotations

import numpy as np
import pytest

from natbench.analysis import plots
from natbench.analysis.ablation import ablation_frame
from natbench.analysis.budget import attack_budget, suite_budget
from natbench.errors import RunError
from natbench.report import parse_values
from natbench.store import FlagRow, ResultRow, RunRecord, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "natbench.sqlite")
    yield s
    s.close()


def add(store, run_id, accs, flags=None):
    suite = list(next(iter(accs.values())))
    run = RunRecord(run_id=run_id, task="digits", defense="pgd-at+nat", profile="quick", seed=0, config_hash=f"h-{run_id}",
                    git_rev="g", versions={}, device="cpu", started="2024-01-01T00:00:00Z", finished="2024-01-01T01:00:00Z",
                    wall_train_s=1.0, wall_eval_s=1.0, config={}, suite=suite)
    rows = [ResultRow(ck, a, "accuracy", v) for ck, d in accs.items() for a, v in d.items()]
    store.record_run(run, rows, [FlagRow(ck, a, np.array(f, bool)) for (ck, a), f in (flags or {}).items()], [])


def test_ablation_frame_prefers_pgd20(store):
    add(store, "a", {"best": {"clean": 0.9, "pgd-20": 0.5}, "last": {"clean": 0.92, "pgd-20": 0.4}})
    add(store, "b", {"best": {"clean": 0.8, "pgd-20": 0.6}, "last": {"clean": 0.85, "pgd-20": 0.55}})
    df, label = ablation_frame(store, [("0", "a"), ("0.06", "b")])
    assert label == "PGD-20"
    assert df["value"].tolist() == ["0", "0.06"]
    assert df["best_clean"].tolist() == [90.0, 80.0] and df["best_robust"].tolist() == [50.0, 60.0]
    assert df["last_clean"].tolist() == [92.0, 85.0] and df["last_robust"].tolist() == [40.0, 55.0]


def test_ablation_frame_falls_back_to_the_worst_case(store):
    f = {("best", "clean"): [1, 1, 1, 0], ("best", "pgd-5"): [1, 1, 0, 0], ("best", "fgsm"): [1, 0, 1, 0],
         ("last", "clean"): [1, 1, 1, 1], ("last", "pgd-5"): [1, 1, 1, 0], ("last", "fgsm"): [1, 1, 1, 0]}
    add(store, "a", {"best": {"clean": 0.75, "fgsm": 0.5, "pgd-5": 0.5}, "last": {"clean": 1.0, "fgsm": 0.75, "pgd-5": 0.75}}, f)
    df, label = ablation_frame(store, [("1", "a")])
    assert "worst case" in label
    assert df["best_robust"].tolist() == [25.0] and df["last_robust"].tolist() == [75.0]
    with pytest.raises(RunError, match="no 'accuracy' results"):
        ablation_frame(store, [("2", "missing")])


def test_ablation_plot_numeric_and_categorical(store, tmp_path):
    add(store, "a", {"best": {"clean": 0.9, "pgd-20": 0.5}, "last": {"clean": 0.92, "pgd-20": 0.4}})
    add(store, "b", {"best": {"clean": 0.8, "pgd-20": 0.6}, "last": {"clean": 0.85, "pgd-20": float("nan")}})
    df, label = ablation_frame(store, [("0", "a"), ("0.06", "b")])
    p = plots.ablation_plot(df, "nat.omega", tmp_path / "a.png", label)
    df2, _ = ablation_frame(store, [("vanilla", "a"), ("at", "b")])
    q = plots.ablation_plot(df2, "nat.adversary", tmp_path / "b.png", label)
    for path in (p, q):
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


def test_parse_values():
    assert parse_values("0, 0.02,0.04") == ["0", "0.02", "0.04"]
    from natbench.errors import ConfigError

    with pytest.raises(ConfigError, match="twice"):
        parse_values("0,0")
    with pytest.raises(ConfigError, match="v1,v2"):
        parse_values("0,,1")


def test_attack_budget_estimates():
    pgd = attack_budget("pgd", {"steps": 20})
    assert (pgd.forward, pgd.backward) == (21, 20)
    assert (attack_budget("pgd", {"steps": 20, "restarts": 10}).backward) == 200
    assert attack_budget("pgd").backward == 10  # the attack's default steps
    assert (attack_budget("fgsm").forward, attack_budget("fgsm").backward) == (2, 1)
    assert attack_budget("cw-inf", {"steps": 30}).backward == 30
    sq = attack_budget("square")
    assert (sq.forward, sq.backward) == (5001, 0)
    aa = attack_budget("autoattack")  # APGD-CE 100 + APGD-T 9 x 100 + FAB-T 9 x 100 gradients; + Square 5000 queries
    assert (aa.forward, aa.backward) == (100 + 900 + 900 + 5000 + 1, 1900)
    assert attack_budget("apgd-t").backward == 900
    assert attack_budget("autoattack-rand").backward == 2 * 100 * 20  # APGD-CE and -DLR with EOT 20
    tr = attack_budget("transfer", {"steps": 20})
    assert (tr.forward, tr.backward, tr.surrogate_backward) == (1, 0, 20)
    assert "surrogate" in tr.text()
    sb = suite_budget([{"id": "pgd-10", "attack": "pgd", "params": {"steps": 10}}, {"id": "fgsm", "attack": "fgsm"}])
    assert list(sb) == ["pgd-10", "fgsm"] and sb["pgd-10"].backward == 10
