"""Re-id through the command line: ``natbench run --task reid_market --defense amd+nat --profile quick``
on the Market-1501 fixture, its dependency (the vanilla adversary), the leaderboard's mAP and rank-1
columns, and the one-line error when Market-1501 is missing."""
from __future__ import annotations

import io

import pandas as pd
import pytest

import natbench.runner  # noqa: F401 - torch imported before the CLI call
from natbench.cli import main
from natbench.data.market1501 import write_market1501_fixture


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    monkeypatch.delenv("NATBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_amd_nat_run_and_leaderboard_on_the_fixture(tmp_path, capsys):
    data, root = tmp_path / "data", tmp_path / "runs"
    write_market1501_fixture(data)
    rc = main(["run", "--task", "reid_market", "--defense", "amd", "--defense", "amd+nat", "--profile", "quick",
               "--set", "training.epochs=2", "--data-root", str(data), "--root", str(root), "--no-leaderboard"])
    assert rc == 0
    capsys.readouterr()
    assert main(["leaderboard", "--task", "reid_market", "--format", "csv", "--root", str(root)]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(df["defense"]) == {"vanilla", "amd", "amd+nat"}  # vanilla: NAT's adversary, a recorded run
    want = [f"{a} {m}" for a in ("clean", "sma-8", "sma-10", "fna-8", "fna-10", "ifgsm-8", "ifgsm-10") for m in ("mAP", "rank1")]
    assert [c for c in df.columns if c in want] == want
    values = df[want].to_numpy()
    assert ((0 <= values) & (values <= 100)).all()
    vanilla = df[(df.defense == "vanilla") & (df.checkpoint == "last")].iloc[0]
    assert vanilla["sma-8 mAP"] < vanilla["clean mAP"] and vanilla["ifgsm-8 mAP"] < vanilla["clean mAP"]


def test_missing_market1501_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["run", "--task", "reid_market", "--defense", "amd", "--profile", "quick",
               "--data-root", str(tmp_path / "empty"), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "bounding_box_train" in err and "natbench data fixture market1501 --out" in err
    assert not (tmp_path / "runs" / "natbench.sqlite").exists()


def test_adaptive_attack_is_refused_on_reid_before_training(tmp_path, capsys):
    write_market1501_fixture(tmp_path / "data")
    rc = main(["run", "--task", "reid_market", "--defense", "amd", "--profile", "quick", "--suite", "paper-table6",
               "--data-root", str(tmp_path / "data"), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and "classification" in err and not (tmp_path / "runs").exists()
