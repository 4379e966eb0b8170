"""What :mod:`natbench.store` needs to fail in one line and to read without writing.

- :func:`readonly_creator`: SQLite connections for reading commands (``leaderboard``, ``report``):
  ``mode=ro``, so reading never takes the write lock nor creates the schema; on a read-only
  directory, where SQLite cannot create the WAL index (``-shm``) a WAL database needs, the file is
  opened ``immutable=1`` (nobody can write there, so nothing changes under the reader).
- :func:`describe`: a database error (random bytes, a truncated file, a read-only root, a lock held
  too long) as one :class:`~natbench.errors.RunError` line: which file, what is wrong, what to do.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from .errors import RunError

DAMAGED = ("file is not a database", "malformed", "disk image", "not a natbench store", "no such table",
           "no such column", "file is encrypted")
NOT_WRITABLE = ("readonly", "read-only", "unable to open", "permission denied", "disk i/o error")


def readonly_creator(path: Path, timeout: float = 30.0) -> Callable[[], sqlite3.Connection]:
    """A connection factory that opens ``path`` read-only (``immutable`` where ``mode=ro`` cannot)."""
    uri = "file:" + quote(str(Path(path).resolve()))

    def connect() -> sqlite3.Connection:
        try:
            con = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.OperationalError as e:
            if "unable to open" not in str(e):
                raise
        return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, timeout=timeout, check_same_thread=False)

    return connect


def describe(path: object, exc: BaseException) -> RunError:
    """The one-line error of a store that cannot be opened, read or written."""
    orig = getattr(exc, "orig", None) or exc
    msg = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    low = msg.lower()
    if any(k in low for k in DAMAGED):
        return RunError(f"store {path}: not a natbench store, or damaged ({msg}); restore it from a backup, "
                        f"or use another --root (a new store is created there)")
    if any(k in low for k in NOT_WRITABLE):
        return RunError(f"store {path}: cannot be written ({msg}); make --root writable or use another --root "
                        f"(leaderboard and report only read it and work on a read-only root)")
    if "locked" in low or "busy" in low:
        return RunError(f"store {path}: locked by another process for too long ({msg}); try again when it finished")
    return RunError(f"store {path}: cannot open it ({msg})")
