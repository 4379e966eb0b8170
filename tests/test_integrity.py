"""Tests for natbench.integrity: checkpoint hashes recorded with a run, verified before evaluation;
``eval --force`` replaces all results of a changed checkpoint (never a row mixing two models)."""
from __future__ import annotations

import pytest
import torch

from natbench.cli import main
from natbench.errors import RunError
from natbench.integrity import sha256_file, verify
from natbench.store import ResultRow, Store

from helpers import make_run



@pytest.fixture
def run(tmp_path):
    root = tmp_path / "runs"
    run_id = make_run(root)
    shas = {c: sha256_file(root / run_id / f"{c}.pt") for c in ("best", "last")}
    with Store(root / "natbench.sqlite") as s:  # the run's results came from these files
        s.add_results(run_id, [ResultRow("best", "pgd-20", "accuracy", 0.25), ResultRow("last", "pgd-20", "accuracy", 0.3)],
                      [], [], suite=["clean", "pgd-20"], checkpoints=shas)
    return root, run_id


def _tamper(path):
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01
    torch.save(state, path)


def test_verify_accepts_the_recorded_files_and_refuses_a_changed_one(run):
    root, run_id = run
    with Store(root / "natbench.sqlite") as s:
        ok = verify(s, run_id, root / run_id, ("best", "last"))
        assert ok.replace == [] and ok.sha256 == s.checkpoint_sha256(run_id)
        _tamper(root / run_id / "best.pt")
        with pytest.raises(RunError, match="not the file its results were computed from") as e:
            verify(s, run_id, root / run_id, ("best", "last"))
        assert "\n" not in str(e.value) and "--force" in str(e.value)
        assert verify(s, run_id, root / run_id, ("last",)).replace == []
        forced = verify(s, run_id, root / run_id, ("best", "last"), force=True)
        assert forced.replace == ["best"] and forced.sha256["best"] == sha256_file(root / run_id / "best.pt")
        (root / run_id / "last.pt").unlink()
        with pytest.raises(RunError, match="file not found"):
            verify(s, run_id, root / run_id, ("best", "last"), force=True)


def test_a_run_recorded_without_hashes_is_accepted(tmp_path):
    root = tmp_path / "runs"
    run_id = make_run(root)
    with Store(root / "natbench.sqlite") as s:
        assert s.checkpoint_sha256(run_id) == {}
        assert verify(s, run_id, root / run_id, ("best",)).replace == []


def test_eval_refuses_a_changed_checkpoint_and_force_replaces_its_results(run, capsys, monkeypatch):
    root, run_id = run
    monkeypatch.setattr("natbench.suite.escalations", lambda *a, **k: [])  # an untrained model fails the
    # masking checks; their escalated Square attack (a minute on CPU) is not what this test is about
    _tamper(root / run_id / "best.pt")
    before = (root / "natbench.sqlite").read_bytes()
    argv = ["eval", run_id, "--root", str(root), "--device", "cpu", "--checkpoint", "best", "--suite", "smoke"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not the file its results were computed from" in err and len(err.strip().splitlines()) == 1
    with Store(root / "natbench.sqlite") as s:  # nothing changed
        assert set(s.results().query("checkpoint == 'best'").attack) == {"clean", "pgd-20"}
    assert main([*argv, "--force"]) == 0
    with Store(root / "natbench.sqlite") as s:
        res = s.results()
        best = res.query("checkpoint == 'best'")
        assert set(best.attack) == {"clean", "fgsm", "pgd-5"}, "the old model's pgd-20 must not stay beside the new results"
        assert set(res.query("checkpoint == 'last'").attack) == {"clean", "pgd-20"}  # untouched
        assert s.checkpoint_sha256(run_id)["best"] == sha256_file(root / run_id / "best.pt")
    capsys.readouterr()
    assert main(argv) == 0  # the new file is now the recorded one
