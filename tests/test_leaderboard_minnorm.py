"""natbench.leaderboard_minnorm: robust accuracy at several eps from one minimum-norm run (fmn, cw-l2),
one table per norm, beside the threat-model tables (terminal, --write, the html page)."""
from __future__ import annotations

import math

import pytest

from helpers import make_run

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = ("suite: mn\nattacks:\n  - {id: fmn, attack: fmn, params: {steps: 5, eps_grid: [0.05, 0.1, 0.2]}}\n")
SUITE_L2 = "suite: mn2\nattacks:\n  - {id: fmn, attack: fmn, params: {steps: 5}}\n"


def test_one_table_per_norm_with_the_stored_accuracy_at_each_eps(tmp_path, monkeypatch):
    from natbench import leaderboard_minnorm as lm
    from natbench.cli import main
    from natbench.cli_eval import eval_run
    from natbench.store import Store

    monkeypatch.setattr("natbench.suite.model_checks", lambda *a, **k: [])  # an untrained model: not under test here
    monkeypatch.setattr("natbench.suite.escalations", lambda *a, **k: [])
    run_id = make_run(tmp_path)
    (tmp_path / "mn.yaml").write_text(SUITE)
    (tmp_path / "mn2.yaml").write_text(SUITE_L2)
    eval_run(run_id, str(tmp_path / "mn.yaml"), "best", "cpu", tmp_path, None, None, False, False, 1)
    eval_run(run_id, str(tmp_path / "mn2.yaml"), "best", "cpu", tmp_path, None, None, False, False, 1, threat_model="l2:1")
    with Store(tmp_path / "natbench.sqlite", readonly=True) as store:
        res = store.results("digits", threat=None)
        frames = lm.tables(store, "digits")
        assert [f.attrs["norm"] for f in frames] == ["linf", "l2"]
        linf, l2 = frames
        assert list(linf["attack"]) == ["fmn"] and list(linf["checkpoint"]) == ["best"]
        assert [c for c in linf.columns if c.startswith("@")] == ["@0.05", "@0.1", "@0.2"]
        assert [c for c in l2.columns if c.startswith("@")] == ["@0.25", "@0.5", "@1", "@2"]  # the default grid of eps 1
        for frame, key in ((linf, ""), (l2, "l2:1.0")):
            mine = res[(res["threat"] == key) & (res["attack"] == "fmn") & (res["checkpoint"] == "best")].set_index("metric")["value"]
            for col in (c for c in frame.columns if c.startswith("@")):
                assert frame.loc[0, col] == pytest.approx(100 * mine[f"accuracy{col}"])
            assert frame.loc[0, "median_norm"] == pytest.approx(mine["median_norm"]) or math.isinf(mine["median_norm"])
            clean = res[(res["threat"] == "") & (res["attack"] == "clean") & (res["checkpoint"] == "best")
                        & (res["metric"] == "accuracy")]["value"]
            assert frame.loc[0, "clean"] == pytest.approx(100 * clean.iloc[-1])
            assert frame.loc[0, "seeds"] == 1 and frame.loc[0, "run_ids"] == run_id
    assert main(["leaderboard", "--root", str(tmp_path), "--format", "md", "--write", "--out", str(tmp_path / "lb")]) == 0
    md = (tmp_path / "lb" / "digits-minnorm.md").read_text()
    assert "L-inf" in md and "L2" in md and "@0.25" in md
    assert main(["leaderboard", "--root", str(tmp_path), "--format", "html", "--write", "--out", str(tmp_path / "lb")]) == 0
    assert "<h2>Minimum-norm attacks" in (tmp_path / "lb" / "digits.html").read_text()


def test_no_minimum_norm_results_no_table(tmp_path):
    from natbench import leaderboard_minnorm as lm
    from natbench.store import Store

    make_run(tmp_path)
    with Store(tmp_path / "natbench.sqlite", readonly=True) as store:
        assert lm.tables(store, "digits") == []
