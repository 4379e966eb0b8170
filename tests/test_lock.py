"""Tests for natbench.lock: one process per run directory, a waiting second start, a stale lock, and the same
run started twice by two processes trains once."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from natbench.errors import RunError
from natbench.lock import LOCK_NAME, RunLock, locked_run_dir
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.store import Store


def _hold(run_dir, ready, release):
    with locked_run_dir(run_dir):
        ready.set()
        release.wait(30)


def test_second_process_is_refused_or_waits(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(tmp_path / "run", ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunError, match=f"running in PID {p.pid}"):
            RunLock(tmp_path / "run", wait=False).acquire()
        said = []
        t0 = time.perf_counter()
        ctx.Process(target=lambda: (time.sleep(0.5), release.set())).start()
        with locked_run_dir(tmp_path / "run", on_wait=said.append):  # waits for the holder
            assert time.perf_counter() - t0 >= 0.4
            assert (tmp_path / "run" / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        assert said and f"running in PID {p.pid}" in said[0]
    finally:
        release.set()
        p.join(10)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = (f"from natbench.lock import RunLock; import os; RunLock({str(run)!r}).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
    assert (run / LOCK_NAME).exists()  # the killed holder left its file (and PID) behind
    with locked_run_dir(run):
        assert (run / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert not (run / LOCK_NAME).exists()


def test_a_new_empty_folder_is_removed_again(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with locked_run_dir(tmp_path / "new"):
            1 / 0
    assert not (tmp_path / "new").exists()
    with pytest.raises(ZeroDivisionError):  # nor the results root it had to create
        with locked_run_dir(tmp_path / "root" / "run"):
            1 / 0
    assert not (tmp_path / "root").exists()
    (tmp_path / "kept").mkdir()
    with locked_run_dir(tmp_path / "kept"):
        pass
    assert not (tmp_path / "kept").exists()  # an empty run folder is never left behind
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.yaml").write_text("x")
    with locked_run_dir(tmp_path / "full"):
        pass
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["config.yaml"]


def _run_quick(root: str, out: str) -> None:
    import json
    import sys

    from natbench.runner import Reporter, Runner

    class Say(Reporter):
        def message(self, text: str) -> None:
            print(text, file=sys.stderr, flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(text) + "\n")

    reg = get_registry()
    r = resolve(reg, "digits", "vanilla", profile="quick", sets=["training.epochs=1"], suite="smoke")
    Runner(Path(root), None, torch.device("cpu"), Say(), reg).run(r)


@pytest.mark.slow
def test_the_same_run_started_twice_trains_once(tmp_path, monkeypatch):
    """Two processes start the same run together: one trains, the other waits ("running in PID N")
    and then reuses the finished run."""
    import json
    import multiprocessing as mp

    monkeypatch.setattr("natbench.suite.escalations", lambda *a, **k: [])  # inherited by the forked children
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_run_quick, args=(str(tmp_path / "runs"), str(tmp_path / f"log{i}.jsonl"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    logs = [[json.loads(x) for x in (tmp_path / f"log{i}.jsonl").read_text().splitlines()] for i in range(2)]
    trained = [any("complete (train" in m for m in log) for log in logs]
    assert sorted(trained) == [False, True], logs
    waiter = logs[trained.index(False)]
    assert any("running in PID" in m for m in waiter) and any("already complete" in m for m in waiter), waiter
    with Store(tmp_path / "runs" / "natbench.sqlite") as s:
        assert len(s.runs()) == 1
    leftovers = [p.name for p in (tmp_path / "runs").rglob("*.tmp")] + [p.name for p in (tmp_path / "runs").rglob(".lock")]
    assert leftovers == []
