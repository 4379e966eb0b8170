"""The results store: runs, results, per-sample flags and sanity checks, in SQLite or PostgreSQL.

One code path through SQLAlchemy Core for both back ends (:data:`METADATA` is the schema):

- **SQLite** (default): the file ``<root>/natbench.sqlite``, WAL mode, foreign keys on, writes in
  ``BEGIN IMMEDIATE`` transactions; the schema version is ``PRAGMA user_version``.
- **PostgreSQL**: ``NATBENCH_DB=postgresql://user@host/db`` or ``--db`` (driver psycopg 3), for
  workers on many nodes writing concurrently; the schema version is the ``natbench_meta`` row
  ``schema_version``. Run directories (checkpoints) still live under the results root, which must
  then be a shared file system.

The store never imports the runner or torch: a run is handed over as plain dataclasses and written
in ONE transaction, so a reader sees either the whole run or none of it. Writes are idempotent per
(run, checkpoint, attack): recording a run replaces any earlier row set of that run, adding results
replaces those of the same (checkpoint, attack); a transaction that loses a race with another
writer (a unique-key violation, a lock or serialization failure) is retried from scratch, so a
requeued job never duplicates a row and never half-writes one.

Per-sample correctness flags are stored packed (``np.packbits``) together with their exact length
``n``, so worst-case ("robust under every attack") accuracy can be recomputed for any attack subset.

The store is one class, :class:`Store`, assembled by responsibility: :mod:`natbench.store_schema`
(connection, schema, migrations, transactions), :mod:`natbench.store_write` (recording runs and
results), :mod:`natbench.store_read` (queries: runs, results, flags, worst case, checks) and
:mod:`natbench.store_rows` (the row dataclasses and their packing).
"""
from __future__ import annotations

import os
from pathlib import Path

from .store_read import StoreQueries
from .store_rows import CheckRow, FlagRow, ResultRow, RunRecord, pack_flags, unpack_flags  # noqa: F401 - the store's API
from .store_schema import SCHEMA_VERSION, SQLITE_NAME, WRITE_ATTEMPTS, StoreBase  # noqa: F401 - the store's API
from .store_write import StoreWrites


def store_url(root: str | Path, db: str | None = None) -> str:
    """The store of a results root: ``db`` (or ``$NATBENCH_DB``), else ``<root>/natbench.sqlite``."""
    db = db or os.environ.get("NATBENCH_DB") or None
    return db if db else str(Path(root) / SQLITE_NAME)


def store_exists(root: str | Path, db: str | None = None) -> bool:
    """Whether the store of ``root``/``db`` may hold runs (a database URL always may)."""
    url = store_url(root, db)
    return "://" in url or Path(url).exists()


class Store(StoreQueries, StoreWrites, StoreBase):
    """The results store at ``path_or_url``: a SQLite file path, or a ``postgresql://`` URL.
    Safe to open from several processes (and, with PostgreSQL, from many nodes)."""

    def __enter__(self) -> "Store":
        return self


def open_store(root: str | Path, db: str | None = None, readonly: bool = False) -> Store:
    """The store of a results root (:func:`store_url`); ``readonly`` for reading commands. The default
    file ``<root>/natbench.sqlite`` is written only where it resolves inside ``root`` (not through a
    symlink out of it); a store named by ``--db``/``$NATBENCH_DB`` is wherever it says."""
    url = store_url(root, db)
    if not readonly and url == str(Path(root) / SQLITE_NAME):
        from .safety import inside

        inside(root, url)
    return Store(url, readonly=readonly)

