"""End to end on digits (CPU): determinism, resume after SIGKILL, dependency reuse, no partial rows."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import Reporter, Runner
from natbench.store import Store

pytestmark = pytest.mark.slow
SETS = ["training.epochs=4", "threat_model.train_steps=3", "threat_model.train_step_size=0.1"]  # small, same code paths
ARGS = ["--task", "digits", "--defense", "nat", "--seed", "0", "--suite", "smoke", *(a for s in SETS for a in ("--set", s))]


def _cli(root: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "natbench.cli", "run", *ARGS, "--root", str(root), "--device", "cpu", "--no-leaderboard", *extra]
    env = {**os.environ, "COLUMNS": "200"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _results(root: Path, run_id: str) -> dict:
    df = Store(root / "natbench.sqlite").results()
    df = df[df.run_id == run_id]
    return {(r.checkpoint, r.attack, r.metric): r.value for r in df.itertuples()}


@pytest.fixture(scope="module")
def nat_run_id() -> str:
    return resolve(get_registry(), "digits", "nat", seed=0, sets=SETS, suite="smoke").run_id


@pytest.fixture(scope="module")
def reference(tmp_path_factory, nat_run_id):
    root = tmp_path_factory.mktemp("uninterrupted")
    proc = _cli(root)
    assert proc.returncode == 0, proc.stderr
    return root, _results(root, nat_run_id)


def test_nat_run_records_both_checkpoints_and_dependency(reference, nat_run_id):
    root, res = reference
    assert {k[0] for k in res} == {"best", "last"}
    assert {k[1] for k in res} == {"clean", "fgsm", "pgd-5"}
    for metric in ("entropy", "nontarget_entropy", "hoyer"):
        assert ("best", "clean", metric) in res
    runs = Store(root / "natbench.sqlite").runs()
    assert sorted(runs.defense) == ["pgd-at+nat", "vanilla"]  # the adversary is a recorded vanilla run
    rec = runs.set_index("defense").loc["pgd-at+nat"]
    assert rec.seed == 0 and rec.git_rev and rec.device == f"cpu threads={torch.get_num_threads()}"
    assert (root / nat_run_id / "config.yaml").is_file() and (root / nat_run_id / "record.json").is_file()


def test_same_seed_same_numbers(reference, nat_run_id):
    root, res = reference
    proc = _cli(root, "--force")  # retrain the NAT model from scratch in the same root
    assert proc.returncode == 0, proc.stderr
    assert _results(root, nat_run_id) == res


def test_identical_run_is_reused(reference):
    root, _ = reference
    proc = _cli(root)
    assert proc.returncode == 0
    assert "already complete" in proc.stderr


def test_kill_and_resume_gives_uninterrupted_numbers(tmp_path, reference, nat_run_id):
    _, expected = reference
    proc = _cli(tmp_path, wait=False)
    state = tmp_path / nat_run_id / "state.pt"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if state.exists() and torch.load(state, weights_only=True)["epoch"] >= 1:
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        else:
            pytest.fail("the NAT run never reached epoch 2")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = torch.load(state, weights_only=True)["epoch"]
    assert killed_at < 3, "killed too late to test resumption"
    store = Store(tmp_path / "natbench.sqlite")
    assert nat_run_id not in set(store.runs().run_id)  # a killed run is never recorded
    assert not any(p.name.endswith(".tmp") and p.stat().st_size == 0 for p in (tmp_path / nat_run_id).iterdir())

    again = _cli(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch" in again.stderr
    assert _results(tmp_path, nat_run_id) == expected


def test_failure_mid_run_records_nothing(tmp_path, monkeypatch):
    reg = get_registry()
    r = resolve(reg, "digits", "pgd-at", seed=1, sets=["training.epochs=1"], suite="smoke")
    runner = Runner(tmp_path, None, torch.device("cpu"), registry=reg)

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runner, "evaluate", boom)
    with pytest.raises(RuntimeError):
        runner.run(r)
    assert runner.store.runs().empty


def test_eval_adds_a_suite_to_a_finished_run(reference, nat_run_id):
    from natbench.cli import main

    root, _ = reference
    assert main(["eval", nat_run_id, "--suite", "digits", "--checkpoint", "best", "--root", str(root), "--device", "cpu"]) == 0
    res = _results(root, nat_run_id)
    assert ("best", "pgd-20", "accuracy") in res and ("last", "pgd-20", "accuracy") not in res
    assert ("best", "pgd-5", "accuracy") in res  # earlier results kept
    suite = Store(root / "natbench.sqlite").get_run(nat_run_id).suite
    assert suite[:3] == ["clean", "fgsm", "pgd-5"] and "cw-inf" in suite


def test_cifar10_task_runs_end_to_end_on_the_fixture(tmp_path):
    from natbench.cli import main

    data = tmp_path / "data"
    assert main(["data", "fixture", "cifar10", "--out", str(data)]) == 0
    args = ["run", "--task", "cifar10", "--defense", "pgd-at", "--profile", "quick", "--suite", "smoke",
            "--set", "model.arch=small_cnn", "--set", "training.epochs=1", "--data-root", str(data),
            "--root", str(tmp_path / "runs"), "--device", "cpu", "--no-leaderboard"]
    assert main(args) == 0
    runs = Store(tmp_path / "runs" / "natbench.sqlite").runs()
    assert list(runs.task) == ["cifar10"] and list(runs.defense) == ["pgd-at"]


def test_missing_cifar_data_is_a_user_error(tmp_path, capsys, monkeypatch):
    from natbench.cli import main

    monkeypatch.chdir(tmp_path)  # no ./data here
    assert main(["run", "--task", "cifar10", "--defense", "vanilla", "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "natbench data fixture cifar10" in err[0]
    assert not (tmp_path / "runs" / "natbench.sqlite").exists()  # nothing half-written


# ------------------------------------------------------------------------------- provenance, best == last
def _tiny(seed: int = 3):
    return resolve(get_registry(), "digits", "vanilla", seed=seed, sets=["training.epochs=1"], suite="smoke")


class _Recorder(Reporter):
    """A reporter that remembers its bars, the attacks named and the batches advanced, and messages."""

    def __init__(self):
        self.bars, self.attacks, self.messages, self.batches = [], [], [], 0

    def start(self, description, total):
        self.bars.append(description)
        return description

    def advance(self, handle, n=1, **info):
        if "attack" in info:
            self.attacks.append(info["attack"])
        if handle.startswith("eval"):
            self.batches += n

    def message(self, text):
        self.messages.append(text)


def test_best_equal_to_last_is_evaluated_once_and_recorded_for_both(tmp_path, monkeypatch):
    import shutil

    import natbench.suite as suite_mod
    from natbench.runner import PARTIAL

    monkeypatch.setattr(suite_mod, "escalations", lambda *a, **k: [])  # an untrained model fails the checks: no Square here
    r = _tiny()
    rep = _Recorder()
    runner = Runner(tmp_path, None, torch.device("cpu"), rep, registry=get_registry())
    task = runner.task(r)
    run_dir = tmp_path / r.run_id
    run_dir.mkdir()
    torch.manual_seed(0)
    weights = task.build_model().state_dict()
    torch.save(weights, run_dir / "best.pt")
    torch.save(weights, run_dir / "last.pt")  # same weights, another file (torch names the archive after it)
    calls: list[str] = []
    real = type(task).evaluate

    def counting(self, model, loader, attack, **kw):
        calls.append(type(attack).__name__)
        return real(self, model, loader, attack, **kw)

    monkeypatch.setattr(type(task), "evaluate", counting)
    results, flags, checks = runner.evaluate(r, task, run_dir)
    once = list(calls)
    assert [d for d in rep.bars if d.startswith("eval")] == ["eval vanilla [best]"]  # the progress names the checkpoint
    assert rep.attacks == ["clean", "fgsm", "pgd-5"]  # ... and the attack it is running
    assert rep.batches >= 3 * 1  # advanced per test batch (digits: 1 batch of 360)
    assert once[:3] == ["NoneType", "FGSM", "PGD"]  # clean, fgsm, pgd-5 (then the model checks' own attacks)
    by = {(x.checkpoint, x.attack, x.metric): x.value for x in results}
    assert {k[0] for k in by} == {"best", "last"}
    assert {k[1:]: v for k, v in by.items() if k[0] == "best"} == {k[1:]: v for k, v in by.items() if k[0] == "last"}
    assert sorted((f.checkpoint, f.attack) for f in flags) == sorted((c, a) for c in ("best", "last") for a in ("clean", "fgsm", "pgd-5"))
    assert {c.name for c in checks if c.checkpoint == "last"} == {c.name for c in checks if c.checkpoint == "best"} != set()

    (run_dir / PARTIAL).unlink()
    torch.manual_seed(1)
    torch.save(task.build_model().state_dict(), run_dir / "last.pt")  # other weights: both are evaluated
    calls.clear()
    runner.evaluate(r, task, run_dir)
    assert calls == once * 2  # so with equal weights the suite and the checks ran for one checkpoint only


def test_numerics_are_recorded_and_a_rerun_with_other_numerics_is_a_new_result(tmp_path, monkeypatch):
    import json

    import natbench.runner as runner_mod

    r = _tiny()
    rep = _Recorder()
    runner = Runner(tmp_path, None, torch.device("cpu"), rep, registry=get_registry())
    assert runner.run(r) == r.run_id
    assert any(m.startswith(f"run {r.run_id} (cpu, ") and m.endswith(str(tmp_path / r.run_id)) for m in rep.messages)
    store = Store(tmp_path / "natbench.sqlite")
    rec = json.loads((tmp_path / r.run_id / "record.json").read_text())
    threads_now = torch.get_num_threads()
    assert rec["numerics"] == {"device": "cpu", "threads": threads_now, "torch": torch.__version__}
    assert store.get_run(r.run_id).device == f"cpu threads={threads_now}"
    first = _results(tmp_path, r.run_id)

    real = runner_mod.numerics
    monkeypatch.setattr(runner_mod, "numerics", lambda device: {**real(device), "threads": 99})
    assert runner.run(r) == r.run_id  # without --force: the complete run is reused
    new_id = runner.run(r, force=True)  # other numerics: a new result beside the first, not an overwrite
    assert new_id.startswith(r.run_id + ".cpu-t99-torch")
    runs = store.runs().set_index("run_id")
    assert set(runs.index) == {r.run_id, new_id} and set(runs.config_hash) == {r.config_hash}
    assert runs.loc[r.run_id, "variant"] == r.variant == "training.epochs=1"
    assert runs.loc[new_id, "variant"] == f"training.epochs=1 numerics={new_id[len(r.run_id) + 1:]}"
    assert runs.loc[new_id, "device"] == "cpu threads=99"
    assert _results(tmp_path, r.run_id) == first and (tmp_path / new_id / "best.pt").is_file()
    assert runner.run(r) == new_id  # a plain rerun reuses the result with the current numerics
    assert runner.run(r, force=True) == new_id and len(store.runs()) == 2  # same numerics: replaced

    monkeypatch.setattr(runner_mod, "numerics", real)
    assert runner.run(r, force=True) == r.run_id and len(store.runs()) == 2


def test_run_id_does_not_depend_on_threads(monkeypatch):
    before = _tiny().run_id
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if n != 2 else 1)
        assert _tiny().run_id == before
    finally:
        torch.set_num_threads(n)


def test_the_engine_modules_do_not_shadow_the_python_api():
    """natbench.train / natbench.evaluate are the API's functions; a submodule of the same name, once
    imported (the runner imports its parts), would replace them (natbench/train.py did, for a while)."""
    import natbench
    import natbench.cli  # noqa: F401
    import natbench.runner  # noqa: F401
    import natbench.sweep  # noqa: F401

    assert callable(natbench.train) and callable(natbench.evaluate)
    assert natbench.train.__module__ == natbench.evaluate.__module__ == "natbench.api"
