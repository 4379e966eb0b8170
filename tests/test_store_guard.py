"""Tests for natbench.store_guard and the store's read-only mode: reading commands never write the
store (they work on a read-only root and beside a writer holding the lock); damaged stores and
read-only roots are one line, exit 2."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from natbench.cli import main
from natbench.errors import RunError
from natbench.store import Store
from helpers import make_run as _make_run, tree_snapshot as _snapshot


@contextlib.contextmanager
def read_only(*paths: Path):
    """Make ``paths`` unwritable, also for root (``chattr +i``; plain permissions do not stop root)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: cannot make a folder read-only")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True)
    else:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)




@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "runs"
    _make_run(r)
    return r


def test_leaderboard_reads_a_read_only_root(root, capsys):
    before = _snapshot(root)
    with read_only(root / "natbench.sqlite", root):
        assert main(["leaderboard", "--root", str(root), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("defense,") and "vanilla" in out
    assert _snapshot(root) == before


def test_run_on_a_read_only_root_is_one_line(root, capsys):
    before = _snapshot(root)
    with read_only(root / "natbench.sqlite", root):
        rc = main(["run", "--task", "digits", "--defense", "vanilla", "--profile", "quick", "--set", "training.epochs=2",
                   "--root", str(root), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "permission" in err.lower() or "cannot be written" in err or "read-only" in err.lower()
    assert _snapshot(root) == before


def test_reading_does_not_wait_for_a_writer(root, capsys):
    """A writer holds the store's write lock: a read-only open does not need it (the writable open
    takes it for its schema check and would wait 30 s, then fail)."""
    con = sqlite3.connect(root / "natbench.sqlite", isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.perf_counter()
        assert main(["leaderboard", "--root", str(root), "--format", "csv"]) == 0
        assert time.perf_counter() - t0 < 20
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert "vanilla" in capsys.readouterr().out


def test_readonly_store_never_writes(root):
    with Store(root / "natbench.sqlite", readonly=True) as s:
        assert len(s.runs()) == 1
        with pytest.raises(RunError, match="cannot be written"):
            s.delete_run(s.runs().run_id[0])
    with Store(root / "natbench.sqlite") as s:
        assert len(s.runs()) == 1


def test_readonly_open_upgrades_an_old_store_once(tmp_path):
    """A schema-1 store (before variants) is migrated by the first open, even a reading one."""
    path = tmp_path / "natbench.sqlite"
    with Store(path):
        pass
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE runs DROP COLUMN variant")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with Store(path, readonly=True) as s:
        assert list(s.runs().columns)[-1] == "variant"


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "text"])
def test_damaged_store_is_one_line(damage, root):
    path = root / "natbench.sqlite"
    data = path.read_bytes()
    path.write_bytes({"random": os.urandom(len(data)), "truncated": data[: len(data) // 3], "empty": b"",
                      "text": b"hello, this is not a database\n" * 200}[damage])
    for readonly in (True, False) if damage != "empty" else (True,):  # a writer makes an empty file a new store
        with pytest.raises(RunError, match="not a natbench store, or damaged") as e:
            with Store(path, readonly=readonly) as s:
                s.runs()
        assert "\n" not in str(e.value) and str(path) in str(e.value) and "backup" in str(e.value)


def test_a_store_symlinked_out_of_root_is_not_written(root, tmp_path):
    from natbench.store import open_store

    outside = tmp_path / "elsewhere.sqlite"
    (root / "natbench.sqlite").rename(outside)
    (root / "natbench.sqlite").symlink_to(outside)
    with pytest.raises(RunError, match="outside the results root"):
        open_store(root)
    with open_store(root, readonly=True) as s:  # reading it is fine
        assert len(s.runs()) == 1
