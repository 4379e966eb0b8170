"""One leaderboard table per threat model (issue 16): rows of different (norm, eps) never share a table,
an ``avg`` or a ``worst-case``; a run evaluated under another threat model than it was trained under
(``natbench eval --threat-model``) is a row of that model's table with its ``trained`` threat model shown
(natbench.leaderboard.tables, natbench.cli_output, natbench.leaderboard_render.write)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from natbench import leaderboard, threats
from natbench.cli import main
from natbench.errors import RunError
from natbench.store import FlagRow, ResultRow, RunRecord, Store

F = {  # per-sample correctness, 8 test points
    "clean": [1, 1, 1, 1, 1, 1, 0, 0],
    "pgd": [1, 1, 0, 0, 1, 0, 0, 0],
    "apgd-l2": [1, 0, 1, 0, 1, 0, 0, 0],
    "square-l2": [1, 1, 1, 0, 0, 0, 0, 0],
    "fgsm": [1, 1, 0, 0, 0, 0, 0, 0],
}
A_L2 = {"clean": F["clean"], "apgd-l2": [1, 0, 0, 0, 1, 0, 0, 0], "square-l2": [1, 0, 1, 0, 0, 0, 0, 0]}  # run a under L2
L2 = threats.key("l2", 0.5)


def _run(store, run_id, norm, eps, defense, own_attacks, *, started):
    config = {"task": {"threat_model": {"norm": norm, "eps": eps}}, "suite": {"attacks": [
        {"id": a, "attack": a.split("-")[0]} for a in own_attacks]}}
    store.record_run(RunRecord(run_id=run_id, task="toy", defense=defense, profile="quick", seed=0, config_hash=run_id,
                               git_rev="g", versions={}, device="cpu", started=started, finished=started, wall_train_s=1.0,
                               wall_eval_s=1.0, config=config, suite=["clean", *own_attacks]),
                     [ResultRow("best", a, "accuracy", float(np.mean(F[a]))) for a in ("clean", *own_attacks)],
                     [FlagRow("best", a, np.array(F[a], bool)) for a in ("clean", *own_attacks)], [])


@pytest.fixture
def root(tmp_path):
    """Run a (L-inf 0.3, evaluated under its own and under L2 0.5) and run b (trained and evaluated
    under L2 0.5)."""
    with Store(tmp_path / "natbench.sqlite") as s:
        _run(s, "a", "linf", 0.3, "pgd-at", ["pgd", "fgsm"], started="2024-01-01T00:00:00Z")
        _run(s, "b", "l2", 0.5, "trades", ["apgd-l2", "square-l2"], started="2024-01-01T00:00:01Z")
        s.add_results("a", [ResultRow("best", x, "accuracy", float(np.mean(f))) for x, f in A_L2.items()],
                      [FlagRow("best", x, np.array(f, bool)) for x, f in A_L2.items()], [], suite=list(A_L2), threat=L2,
                      facts={"threats": {L2: {"suite": "l2-suite", "attacks": {"apgd-l2": "autoattack"}}}})
    return tmp_path


def test_one_table_per_threat_model(root):
    store = Store(root / "natbench.sqlite", readonly=True)
    frames = leaderboard.tables(store, "toy")
    assert [f.attrs["threat_title"] for f in frames] == ["L-inf eps 0.3", "L2 eps 0.5"]
    linf, l2 = frames
    # the L-inf table: run a alone, its own attacks; no trained column (trained under the table's model)
    assert linf["defense"].tolist() == ["pgd-at"] and "trained" not in linf.columns and "apgd-l2" not in linf.columns
    assert linf.loc[0, "avg"] == pytest.approx((37.5 + 25.0) / 2) and linf.loc[0, "worst-case"] == 25.0  # samples 0, 1
    # the L2 table: both runs; a's L2 numbers, never its L-inf pgd
    l2 = l2.set_index("defense")
    assert "pgd" not in l2.columns and l2["trained"].to_dict() == {"pgd-at": "linf 0.3", "trades": "l2 0.5"}
    assert (l2["norm"] == "l2").all() and (l2["eps"] == 0.5).all()
    assert l2.loc["trades", "avg"] == pytest.approx((37.5 + 37.5) / 2)
    assert l2.loc["pgd-at", "avg"] == pytest.approx(25.0) and l2.loc["pgd-at", "apgd-l2"] == 25.0
    assert l2.loc["trades", "worst-case"] == 25.0 and l2.loc["pgd-at", "worst-case"] == 12.5  # samples 0, 2 / sample 0
    assert list(l2.index) == ["trades", "pgd-at"] and l2.loc["pgd-at", "n_test"] == 8
    # the suite of a's L2 evaluation, as recorded with it: the table sorts by its AutoAttack and names it
    assert frames[1].attrs["sort_by"] == "apgd-l2" and frames[1].attrs["suites"] == ["l2-suite"]
    assert linf.attrs["sort_by"] == "worst-case"
    # one table chosen
    only = leaderboard.table(store, "toy", threat_model=("l2", 0.5))
    assert set(only["defense"]) == {"pgd-at", "trades"}
    with pytest.raises(RunError, match=r"L1 eps 5.*Evaluated under: linf:0.3, l2:0.5"):
        leaderboard.table(store, "toy", threat_model=("l1", 5.0))


def test_cli_threat_model_option_and_exports(root, capsys, tmp_path):
    assert main(["leaderboard", "--task", "toy", "--threat-model", "l2:0.5", "-f", "csv", "--root", str(root)]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert sorted(df["defense"]) == ["pgd-at", "trades"] and set(df["norm"]) == {"l2"}
    assert main(["leaderboard", "--task", "toy", "-f", "csv", "--root", str(root)]) == 0  # every table, norm/eps per row
    df = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    assert df[["defense", "norm"]].values.tolist() == [["pgd-at", "linf"], ["trades", "l2"], ["pgd-at", "l2"]]
    assert main(["leaderboard", "--task", "toy", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "toy — L-inf eps 0.3" in text and "toy — L2 eps 0.5" in text
    paths = leaderboard.write(Store(root / "natbench.sqlite", readonly=True), tmp_path / "lb", "toy", ("md", "html"))
    md, page = (p.read_text() for p in paths)
    assert "## toy — L-inf eps 0.3" in md and "## toy — L2 eps 0.5" in md and md.count("Threat model") == 2
    assert "Leaderboard — L2 eps 0.5" in page and "Leaderboard — L-inf eps 0.3" in page


@pytest.mark.parametrize("value, needle", [("l2", "NORM:EPS"), ("l4:1", "unknown norm"), ("l2:x", "not a number"),
                                           ("linf:2", "pixel range")])
def test_cli_bad_threat_model_is_one_line(root, capsys, value, needle):
    assert main(["leaderboard", "--task", "toy", "--threat-model", value, "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def drop_fgsm(res):
    return res[res["attack"] != "fgsm"]


def extra_table(store, task):
    df = pd.DataFrame({"defense": ["x"], "mean": [1.0]})
    df.attrs["threat_title"] = "corruptions"
    return [df]


def test_hooks_for_other_tables(root, monkeypatch):
    """RESULT_FILTERS keep results (e.g. corruptions) out of every threat-model table; EXTRA_TABLES add tables."""
    monkeypatch.setattr(leaderboard, "RESULT_FILTERS", ("tests.test_leaderboard_threat:drop_fgsm",))
    monkeypatch.setattr(leaderboard, "EXTRA_TABLES", ("tests.test_leaderboard_threat:extra_table",))
    store = Store(root / "natbench.sqlite", readonly=True)
    frames = leaderboard.tables(store, "toy", extra=True)
    assert [f.attrs["threat_title"] for f in frames] == ["L-inf eps 0.3", "L2 eps 0.5", "corruptions"]
    assert "fgsm" not in frames[0].columns and frames[0].loc[0, "avg"] == 37.5
    assert len(leaderboard.tables(store, "toy")) == 2


def test_reference_rows_go_into_the_table_of_their_threat_model(root, tmp_path):
    import json

    from natbench.reference import load, with_reference

    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "L2Model.json").write_text(json.dumps({"name": "L2 paper", "clean_acc": 90, "autoattack_acc": 70, "eps": "0.5",
                                                  "threat_model": "L2"}))
    (ref / "LinfModel.json").write_text(json.dumps({"name": "Linf paper", "clean_acc": 80, "autoattack_acc": 40, "eps": "0.3"}))
    (ref / "Linf8.json").write_text(json.dumps({"name": "other eps", "clean_acc": 80, "autoattack_acc": 40, "eps": "8/255"}))
    store = Store(root / "natbench.sqlite", readonly=True)
    linf, l2 = (with_reference(f, store, load(ref)) for f in leaderboard.tables(store, "toy"))
    assert linf.loc[linf["source"] == "reported", "defense"].tolist() == ["LinfModel"]
    assert l2.loc[l2["source"] == "reported", "defense"].tolist() == ["L2Model"]
