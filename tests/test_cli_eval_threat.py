"""``natbench eval RUN --threat-model NORM:EPS`` (natbench.cli_eval, natbench.suite.add_suite): a run
evaluated under another threat model than it was trained under stores those rows apart from its own,
under the key of that threat model, and the leaderboard shows them in that model's table."""
from __future__ import annotations

import pytest

import natbench.runner  # noqa: F401 - the first CLI call is not slowed by torch's import
from natbench import leaderboard
from natbench.cli import main
from natbench.store import Store

from helpers import make_run


def test_eval_under_l1_is_stored_apart(tmp_path, monkeypatch):
    import natbench.suite

    monkeypatch.setattr(natbench.suite, "escalations", lambda *a, **k: [])  # an untrained model fails checks: no Square here
    root = tmp_path / "runs"
    run_id = make_run(root)  # digits, L-inf 0.2, untrained; one own result per checkpoint (clean)
    suite = tmp_path / "l1.yaml"
    suite.write_text("suite: l1-tiny\nattacks:\n  - {id: apgd-ce, attack: apgd-ce, params: {steps: 2}}\n")
    argv = ["eval", run_id, "--suite", str(suite), "--threat-model", "l1:5", "--checkpoint", "best", "--device", "cpu",
            "--root", str(root)]
    assert main(argv) == 0
    with Store(root / "natbench.sqlite", readonly=True) as s:
        own = s.results()
        assert own[["checkpoint", "attack", "value"]].values.tolist() == [["best", "clean", 0.5], ["last", "clean", 0.5]]
        l1 = s.results(threat="l1:5.0")
        assert set(l1["attack"]) == {"clean", "apgd-ce"} and set(l1["checkpoint"]) == {"best"}
        acc = dict(zip(l1.loc[l1["metric"] == "accuracy", "attack"], l1.loc[l1["metric"] == "accuracy", "value"]))
        assert acc["apgd-ce"] <= acc["clean"]
        assert s.get_run(run_id).suite == ["clean"]  # the run's own record is as it was
        assert not s.checks(run_id, "l1:5.0").empty and s.checks(run_id).empty
        flags = s.flags(run_id, "best", "l1:5.0")
        assert set(flags) == {"clean", "apgd-ce"} and s.flags(run_id, "best") == {}
        frames = leaderboard.tables(s, "digits")
        assert [f.attrs["threat_title"] for f in frames] == ["L-inf eps 0.2", "L1 eps 5"]
        assert frames[1]["trained"].tolist() == ["linf 0.2"] and "apgd-ce" in frames[1].columns
        assert "apgd-ce" not in frames[0].columns
        assert frames[0].attrs["suites"] == ["digits"] and frames[1].attrs["suites"] == ["l1-tiny"]  # not the run's own
        assert s.get_run(run_id).suite == ["clean"]
