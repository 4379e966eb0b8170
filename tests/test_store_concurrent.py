"""Concurrent writers: 8 processes x 200 results into one store, SQLite and a real PostgreSQL server
(started here on loopback from the OS's binaries), no row lost, none duplicated, requeues idempotent."""
from __future__ import annotations

import glob
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from natbench.store import FlagRow, ResultRow, RunRecord, Store

PROCS, PER_PROC = 8, 200


def _run(run_id: str, suite=("clean",)) -> RunRecord:
    return RunRecord(run_id=run_id, task="digits", defense="vanilla", profile="p", seed=0, config_hash=f"h-{run_id}",
                     git_rev="g", versions={}, device="cpu", started="2026-01-01T00:00:00Z",
                     finished="2026-01-01T00:00:01Z", wall_train_s=1.0, wall_eval_s=1.0, config={}, suite=list(suite))


def _worker(url: str, proc: int, per_proc: int) -> None:
    """One 'job': its own run (recorded twice: a requeue), then PER_PROC results added one per
    transaction to the shared run, every 10th sent twice (a retried request)."""
    store = Store(url)
    own = _run(f"own{proc}")
    rows = [ResultRow("best", f"a{k}", "accuracy", k / 1000) for k in range(per_proc)]
    store.record_run(own, rows, [FlagRow("best", "clean", np.ones(5, bool))], [])
    store.record_run(own, rows, [FlagRow("best", "clean", np.ones(5, bool))], [])  # requeued: replaces, no duplicate
    for k in range(per_proc):
        aid = f"p{proc}-{k}"
        for _ in range(2 if k % 10 == 0 else 1):
            store.add_results("shared", [ResultRow("best", aid, "accuracy", proc + k / 1000)],
                              [FlagRow("best", aid, np.array([proc % 2, k % 2], bool))], [], suite=[aid])
    store.close()


def _hammer(url: str, per_proc: int = PER_PROC) -> Store:
    store = Store(url)
    store.record_run(_run("shared"), [ResultRow("best", "clean", "accuracy", 1.0)], [], [])
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(url, i, per_proc)) for i in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return store


def _check(store: Store, per_proc: int = PER_PROC) -> None:
    res = store.results()
    assert not res.duplicated(["run_id", "checkpoint", "attack", "metric"]).any()
    shared = res[res.run_id == "shared"]
    want = {f"p{i}-{k}" for i in range(PROCS) for k in range(per_proc)}
    assert set(shared.attack) == want | {"clean"} and len(shared) == PROCS * per_proc + 1  # no row lost
    for row in shared[shared.attack != "clean"].itertuples():
        proc, k = map(int, row.attack[1:].split("-"))
        assert row.value == pytest.approx(proc + k / 1000)
    assert set(store.get_run("shared").suite) == want | {"clean"}  # the suite list lost no id either
    flags = store.flags("shared", "best")
    assert len(flags) == PROCS * per_proc and all(len(f) == 2 for f in flags.values())
    for i in range(PROCS):
        own = res[res.run_id == f"own{i}"]
        assert len(own) == per_proc and store.find_complete(f"h-own{i}") == f"own{i}"
    assert len(store.runs()) == PROCS + 1


@pytest.mark.slow
def test_sqlite_concurrent_writers(tmp_path):
    _check(_hammer(str(tmp_path / "natbench.sqlite"), 50), 50)  # WAL + BEGIN IMMEDIATE; 8 x 50 keeps it short


# ------------------------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


@pytest.fixture(scope="module")
def pg_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (initdb + pg_ctl from the OS packages)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="natbench-pg-"))  # under /tmp: pytest's dirs are private to root
    data, sock, logf = base / "data", base / "sock", base / "log"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: use the OS's postgres account
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "natbench", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(logf), "-w", "-t", "60", "start"],
                   check=True, capture_output=True)
    url = f"postgresql://natbench@127.0.0.1:{port}/postgres"
    try:
        for _ in range(50):  # pg_ctl -w waited; make sure TCP accepts too
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_postgres_concurrent_writers(pg_url):
    _check(_hammer(pg_url))


def test_postgres_round_trip_and_schema(pg_url):
    store = Store(pg_url)
    run = _run("rt", suite=("clean", "pgd-20"))
    store.record_run(run, [ResultRow("best", "clean", "accuracy", float("nan"))],
                     [FlagRow("best", "clean", np.array([1, 0, 1], bool))], [])
    assert store.get_run("rt") == run
    assert np.isnan(store.results().set_index("run_id").loc["rt", "value"])
    assert store.flags("rt", "best")["clean"].tolist() == [True, False, True]
    store.delete_run("rt")
    assert store.get_run("rt") is None and store.flags("rt", "best") == {}
    Store(pg_url).close()  # opening again keeps the schema (version row) as it is


def test_bad_db_url_is_a_user_error(tmp_path):
    from natbench.errors import ConfigError, RunError

    with pytest.raises(ConfigError, match="PostgreSQL URL"):
        Store("mysql://x@localhost/db")
    with pytest.raises(RunError, match="cannot open"):
        Store("postgresql://nobody@127.0.0.1:1/none")
