"""The dependency runs of a run (natbench.graph; the runner trains them): NAT's random adversary is untrained and
not the target's initialisation, an adversary of another architecture is a recorded run of its own, and a
dependency cycle is refused; nobody waits for an evaluation they did not ask for (deferred dependency
evaluation: the dependent is evaluated first, the dependency after it, or not at all with
--no-dependency-eval; end to end through the CLI, slow)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import Runner
from natbench.store import Store

from helpers import SMALL, run_digits, same_state

REG = get_registry()


@pytest.mark.slow
def test_random_adversary_is_untrained_and_not_the_targets_init(tmp_path, monkeypatch):
    from natbench.regularizers.nat import NAT

    bound = {}
    real_bind = NAT.bind

    def spy(self, role, model):
        bound[role] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_bind(self, role, model)

    monkeypatch.setattr(NAT, "bind", spy)
    r, run_dir = run_digits(tmp_path, "nat", "nat.adversary=random", "training.epochs=1")
    from natbench.store import Store

    assert list(Store(tmp_path / "natbench.sqlite").runs().defense) == ["pgd-at+nat"]  # nothing else trained
    torch.manual_seed(__import__("natbench.runner", fromlist=["derive_seed"]).derive_seed(0, "init"))
    target_init = Runner(tmp_path, registry=REG).task(r).build_model().state_dict()
    assert not same_state(bound["adversary"], target_init)


@pytest.mark.slow
def test_adversary_of_another_architecture_is_a_recorded_run(tmp_path, monkeypatch):
    import natbench.suite as suite_mod

    # a ResNet-18 after one epoch on 8x8 digits is degenerate (about 20 % clean) and fails the
    # large-eps check; its escalated Square would cost minutes on CPU and is not what this tests
    monkeypatch.setattr(suite_mod, "escalations", lambda *a, **k: [])
    r, _ = run_digits(tmp_path, "nat", "nat.adversary_arch=[resnet18]", "training.epochs=1")
    from natbench.store import Store

    runs = Store(tmp_path / "natbench.sqlite").runs().set_index("defense")
    assert "model.arch=resnet18" in runs.loc["vanilla", "variant"]
    assert "nat.adversary_arch=[resnet18]" in runs.loc["pgd-at+nat", "variant"]


def test_dependency_cycle_is_refused(tmp_path):
    from natbench.errors import CompositionError

    spec = tmp_path / "nasty_digits.yaml"
    from natbench.registry import SPECS_DIR

    spec.write_text(f"include: {SPECS_DIR / 'tasks' / 'digits.yaml'}\ndefense_params: {{nat: {{adversary: nasty}}}}\n")
    r = resolve(REG, str(spec), "nat", profile="quick", sets=SMALL, suite="smoke")
    with pytest.raises(CompositionError, match="needs itself"):
        Runner(tmp_path / "runs", registry=REG).run(r)


EVAL_SETS = ["training.epochs=2", "threat_model.train_steps=2", "threat_model.train_step_size=0.1"]


def _run_cli(root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--task", "digits", "--defense", "nat", "--suite", "smoke", *(a for s in EVAL_SETS for a in ("--set", s))]
    cmd = [sys.executable, "-m", "natbench.cli", "run", *args, "--root", str(root), "--device", "cpu", "--no-leaderboard", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}, timeout=900)


def _nat_id() -> str:
    return resolve(get_registry(), "digits", "nat", seed=0, sets=EVAL_SETS, suite="smoke").run_id


def _attacks(root: Path) -> dict[str, set[str]]:
    df = Store(root / "natbench.sqlite").results()
    return {rid: set(g.attack) for rid, g in df.groupby("run_id")}


@pytest.mark.slow
def test_the_dependency_is_evaluated_after_its_dependent(tmp_path):
    proc = _run_cli(tmp_path)
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


@pytest.mark.slow
def test_no_dependency_eval_skips_it_and_says_so(tmp_path):
    proc = _run_cli(tmp_path, "--no-dependency-eval")
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
