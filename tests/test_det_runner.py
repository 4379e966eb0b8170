"""Detection through the command line: ``natbench run --task voc_detection --defense mtd --defense mtd+nat
--profile quick`` on the VOC fixture (the vanilla adversary trained as a dependency run), the
leaderboard's mAP columns, the one-line error when VOC is missing, and the adaptive attack refused."""
from __future__ import annotations

import io

import pandas as pd
import pytest

import natbench.runner  # noqa: F401 - torch imported before the CLI call
from natbench.cli import main
from natbench.data.voc import write_voc_fixture
from natbench.registry import get_registry
from natbench.resolve import resolve


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    monkeypatch.delenv("NATBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    import torch.hub

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.slow
def test_mtd_nat_run_and_leaderboard_on_the_fixture(tmp_path, capsys):
    data, root = tmp_path / "data", tmp_path / "runs"
    write_voc_fixture(data, n_trainval=20, n_test=6, seed=1)
    rc = main(["run", "--task", "voc_detection", "--defense", "mtd", "--defense", "mtd+nat", "--profile", "quick",
               "--set", "training.epochs=2", "--set", "training.batch_size=8", "--suite", "det-smoke",
               "--data-root", str(data), "--root", str(root), "--no-leaderboard"])
    assert rc == 0
    capsys.readouterr()
    assert main(["leaderboard", "--task", "voc_detection", "--format", "csv", "--root", str(root)]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(df["defense"]) == {"vanilla", "mtd", "mtd+nat"}  # vanilla: NAT's adversary, a recorded run
    want = ["clean", "det-cls-3", "det-loc-3", "dag-10", "rap-3"]
    assert [c for c in df.columns if c in want] == want
    values = df[want].to_numpy()
    assert ((0 <= values) & (values <= 100)).all()
    import json

    record = json.loads(next(p for p in root.glob("voc_detection-mtd+nat-*/record.json")).read_text())
    metrics = {(r["checkpoint"], r["attack"], r["metric"]) for r in record["results"]}
    assert ("best", "dag-10", "raw_linf_mean") in metrics and ("best", "dag-10", "mAP_raw") in metrics
    assert {"nat_kl_clean", "nat_kl_adv", "det_adv", "det_clean"} <= set(record["history"][-1])


def test_det_paper_suite_resolves_with_the_four_attacks():
    r = resolve(get_registry(), "voc_detection", "mtd+nat", profile="quick")
    assert r.suite.suite == "det-paper" and [a.id for a in r.suite.attacks] == ["det-cls", "det-loc", "dag", "rap"]
    assert r.spec.model.arch == "ssd_tiny" and r.spec.data.image_size == 96
    paper = resolve(get_registry(), "voc_detection", "mtd", profile="paper")
    assert paper.spec.model.arch == "ssd300_vgg16" and paper.profile.epochs == 239 and paper.profile.milestones == (159, 199)


def test_missing_voc_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["run", "--task", "voc_detection", "--defense", "mtd", "--profile", "quick",
               "--data-root", str(tmp_path / "empty"), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "VOCdevkit/VOC2007" in err and "natbench data fixture voc --out" in err
    assert not (tmp_path / "runs" / "natbench.sqlite").exists()


def test_adaptive_attack_is_refused_on_detection_before_training(tmp_path, capsys):
    write_voc_fixture(tmp_path / "data", n_trainval=4, n_test=2)
    rc = main(["run", "--task", "voc_detection", "--defense", "mtd", "--profile", "quick", "--suite", "paper-table6",
               "--data-root", str(tmp_path / "data"), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "classification" in err and not (tmp_path / "runs").exists()
