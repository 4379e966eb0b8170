"""Nobody waits for an evaluation they did not ask for (natbench.runner: deferred dependency evaluation).

A dependency run (NAT's vanilla adversary) is trained and its checkpoint handed on; the dependent
trains and is evaluated first, the dependency after it, or not at all with --no-dependency-eval.
End to end on digits with a few epochs (slow)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.store import Store

pytestmark = pytest.mark.slow
SETS = ["training.epochs=2", "threat_model.train_steps=2", "threat_model.train_step_size=0.1"]


def _run(root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--task", "digits", "--defense", "nat", "--suite", "smoke", *(a for s in SETS for a in ("--set", s))]
    cmd = [sys.executable, "-m", "natbench.cli", "run", *args, "--root", str(root), "--device", "cpu", "--no-leaderboard", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, timeout=900)


def _nat_id() -> str:
    return resolve(get_registry(), "digits", "nat", seed=0, sets=SETS, suite="smoke").run_id


def _attacks(root: Path) -> dict[str, set[str]]:
    df = Store(root / "natbench.sqlite").results()
    return {rid: set(g.attack) for rid, g in df.groupby("run_id")}


def test_the_dependency_is_evaluated_after_its_dependent(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    nat_id = _nat_id()
    out = " ".join(proc.stderr.split())  # rich wraps long lines
    runs = Store(tmp_path / "natbench.sqlite").runs()
    (dep_id,) = [r for r in runs.run_id if r != nat_id]
    handed = out.index(f"{dep_id}: trained in")
    done = out.index(f"{nat_id}: complete")
    later = out.index(f"{dep_id}: evaluating it now (a dependency of {nat_id}")
    assert handed < done < later
    attacks = _attacks(tmp_path)
    assert attacks[dep_id] == attacks[nat_id] and "clean" in attacks[dep_id]
    assert not Store(tmp_path / "natbench.sqlite").checks(dep_id).empty  # its checks recorded too


def test_no_dependency_eval_skips_it_and_says_so(tmp_path):
    proc = _run(tmp_path, "--no-dependency-eval")
    assert proc.returncode == 0, proc.stderr
    nat_id = _nat_id()
    out = " ".join(proc.stderr.split())
    runs = Store(tmp_path / "natbench.sqlite").runs()
    (dep_id,) = [r for r in runs.run_id if r != nat_id]
    assert f"{dep_id}: not evaluated (--no-dependency-eval" in out
    assert dep_id not in _attacks(tmp_path) and "clean" in _attacks(tmp_path)[nat_id]
    # as the message says, natbench eval evaluates it later
    proc = subprocess.run([sys.executable, "-m", "natbench.cli", "eval", dep_id, "--root", str(tmp_path), "--device", "cpu"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "clean" in _attacks(tmp_path)[dep_id]
