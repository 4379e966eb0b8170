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
"""
from __future__ import annotations

import json
import logging
from collections import Counter
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from natbench.errors import ConfigError, RunError
from natbench.leaderboard_facts import put as put_facts

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: runs.variant
SQLITE_NAME = "natbench.sqlite"
#: attempts of a write transaction that lost a race with a concurrent writer
WRITE_ATTEMPTS = 8

_RUN_COLUMNS = (
    "run_id", "task", "defense", "profile", "seed", "config_hash", "status", "git_rev",
    "versions_json", "device", "started", "finished", "wall_train_s", "wall_eval_s",
    "config_json", "suite_json", "variant",
)


def _metadata():
    """The schema as SQLAlchemy Core tables (imported lazily: the store is imported by the CLI)."""
    from sqlalchemy import (Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData,
                            PrimaryKeyConstraint, Table, Text)

    md = MetaData()
    runs = Table(
        "runs", md,
        Column("run_id", Text, primary_key=True), Column("task", Text, nullable=False),
        Column("defense", Text, nullable=False),  # canonical defense name (leaderboard key)
        Column("profile", Text, nullable=False), Column("seed", Integer, nullable=False),
        Column("config_hash", Text, nullable=False),  # hash of the resolved config
        Column("status", Text, nullable=False, server_default="complete"),
        Column("git_rev", Text, nullable=False), Column("versions_json", Text, nullable=False),
        Column("device", Text, nullable=False),
        Column("started", Text, nullable=False), Column("finished", Text, nullable=False),  # ISO-8601 UTC
        Column("wall_train_s", Float, nullable=False), Column("wall_eval_s", Float, nullable=False),
        Column("config_json", Text, nullable=False),  # resolved config
        Column("suite_json", Text, nullable=False),  # attack ids in suite order, "clean" first
        Column("variant", Text, nullable=False, server_default=""),  # --set values differing from the spec
    )
    Index("runs_task", runs.c.task)
    Index("runs_config_hash", runs.c.config_hash)
    fk = lambda: ForeignKey("runs.run_id", ondelete="CASCADE")  # noqa: E731
    Table("results", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
          Column("attack", Text, nullable=False), Column("metric", Text, nullable=False),
          Column("value", Float),  # NULL stands for NaN
          PrimaryKeyConstraint("run_id", "checkpoint", "attack", "metric"))
    Table("flags", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
          Column("attack", Text, nullable=False),
          Column("n", Integer, nullable=False),  # samples; the blob holds ceil(n/8) bytes
          Column("packed", LargeBinary, nullable=False),  # np.packbits(correct)
          PrimaryKeyConstraint("run_id", "checkpoint", "attack"))
    checks = Table("checks", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
                   Column("name", Text, nullable=False), Column("passed", Integer, nullable=False),
                   Column("detail", Text, nullable=False))
    Index("checks_run", checks.c.run_id)
    # sha256 of each checkpoint file the results were computed from (natbench.integrity); a table added
    # after schema 2 by create_all, so older stores gain it when first opened for writing
    Table("checkpoints", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
          Column("sha256", Text, nullable=False), PrimaryKeyConstraint("run_id", "checkpoint"))
    Table("natbench_meta", md, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
    return md


def store_url(root: str | Path, db: str | None = None) -> str:
    """The store of a results root: ``db`` (or ``$NATBENCH_DB``), else ``<root>/natbench.sqlite``."""
    db = db or os.environ.get("NATBENCH_DB") or None
    return db if db else str(Path(root) / SQLITE_NAME)


def store_exists(root: str | Path, db: str | None = None) -> bool:
    """Whether the store of ``root``/``db`` may hold runs (a database URL always may)."""
    url = store_url(root, db)
    return "://" in url or Path(url).exists()


@dataclass(frozen=True)
class RunRecord:
    """Provenance of one finished run (one task, one canonical defense, one profile, one seed)."""

    run_id: str
    task: str
    defense: str  # canonical defense name
    profile: str
    seed: int
    config_hash: str
    git_rev: str
    versions: dict[str, str]
    device: str
    started: str  # ISO-8601 UTC
    finished: str  # ISO-8601 UTC
    wall_train_s: float
    wall_eval_s: float
    config: dict = field(default_factory=dict)  # resolved config (stored as JSON)
    suite: list[str] = field(default_factory=list)  # attack ids in suite order, "clean" first
    variant: str = ""  # --set values that differ from the spec's defaults (a leaderboard key)


@dataclass(frozen=True)
class ResultRow:
    """One scalar result, e.g. ``ResultRow("best", "pgd-20", "accuracy", 0.53)``."""

    checkpoint: str
    attack: str
    metric: str
    value: float


@dataclass(frozen=True)
class FlagRow:
    """Per-sample correctness (one bool per test sample) of one checkpoint under one attack."""

    checkpoint: str
    attack: str
    correct: np.ndarray


@dataclass(frozen=True)
class CheckRow:
    """The outcome of one evaluation sanity check (see ``natbench.checks``)."""

    checkpoint: str
    name: str
    passed: bool
    detail: str


def pack_flags(correct: np.ndarray) -> tuple[int, bytes]:
    """Pack a 1-D boolean array into ``(n, bytes)`` with ``np.packbits``."""
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f"flags must be 1-D, got shape {arr.shape}")
    return int(arr.shape[0]), np.packbits(arr.astype(bool)).tobytes()


def unpack_flags(n: int, packed: bytes) -> np.ndarray:
    """Inverse of :func:`pack_flags`: a bool array of exactly ``n`` elements."""
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=int(n)).astype(bool)


class Store:
    """The results store at ``path_or_url``: a SQLite file path, or a ``postgresql://`` URL.
    Safe to open from several processes (and, with PostgreSQL, from many nodes)."""

    def __init__(self, path_or_url: str | Path, readonly: bool = False):
        """Open the store, creating the SQLite file's parent directory and the schema if needed.
        ``readonly`` (reading commands): a SQLite store is opened read-only and never written
        (:mod:`natbench.store_guard`); one of an older schema is upgraded first where writable."""
        from sqlalchemy import create_engine, event

        from .store_guard import readonly_creator

        target = str(path_or_url)
        self.is_sqlite = "://" not in target
        self.readonly = readonly and self.is_sqlite
        if self.is_sqlite:
            self.path: Path | str = Path(target)
            if self.readonly:
                engine = create_engine("sqlite://", creator=readonly_creator(self.path))
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(f"sqlite:///{self.path}", connect_args={"timeout": 30})

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn, _record):
                dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys = ON")
                if self.readonly:
                    cur.close()
                    return
                mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("store %s: could not enable WAL (journal_mode=%s)", self.path, mode)
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn):  # writers take the write lock up front: no deadlocked lock upgrades
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("natbench_write") else "BEGIN")
        else:
            if not target.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
                raise ConfigError(f"--db {target}: expected a PostgreSQL URL (postgresql://user@host:port/db) "
                                  f"or nothing for the SQLite file under --root")
            self.path = target
            url = target.replace("postgres://", "postgresql://", 1)
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            try:
                engine = create_engine(url, pool_pre_ping=True)
            except Exception as e:  # noqa: BLE001 - a missing driver or a malformed URL is a user error
                raise ConfigError(f"--db {target}: {e}") from None
        self._engine = engine
        self._md = _metadata()
        self._t = self._md.tables
        self._init_schema()

    def _init_schema(self) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import DatabaseError

        from .store_guard import describe

        if self.readonly:
            return self._check_readonly()
        try:
            with self._engine.connect() as conn:
                conn = conn.execution_options(natbench_write=True)
                with conn.begin():
                    if not self.is_sqlite:  # workers starting together: one creates/migrates, the others wait
                        conn.execute(text("SELECT pg_advisory_xact_lock(7404551)"))
                    version = self._version(conn)
                    if version > SCHEMA_VERSION:
                        raise RunError(
                            f"Store {self.path} has schema version {version}, newer than this natbench "
                            f"({SCHEMA_VERSION}). Upgrade natbench or use another --root."
                        )
                    if version == 1 and self.is_sqlite:  # written before variants: every run is its spec's default
                        conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN variant TEXT NOT NULL DEFAULT ''")
                    self._md.create_all(conn)
                    if self.is_sqlite:
                        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    elif version != SCHEMA_VERSION:
                        conn.execute(text("DELETE FROM natbench_meta WHERE key = 'schema_version'"))
                        conn.execute(text("INSERT INTO natbench_meta (key, value) VALUES ('schema_version', :v)"),
                                     {"v": str(SCHEMA_VERSION)})
        except DatabaseError as e:
            self._engine.dispose()
            raise describe(self.path, e) from None
        except BaseException:
            self._engine.dispose()
            raise

    def _check_readonly(self) -> None:
        """A read-only store: its schema version and tables checked, nothing written; an older schema
        is upgraded by opening it writable once (which fails in one line where it cannot be written)."""
        from sqlalchemy import inspect
        from sqlalchemy.exc import DatabaseError

        from .store_guard import describe

        try:
            with self._engine.connect() as conn:
                version = self._version(conn)
                tables = set(inspect(conn).get_table_names())
        except DatabaseError as e:
            self._engine.dispose()
            raise describe(self.path, e) from None
        if version > SCHEMA_VERSION:
            self._engine.dispose()
            raise RunError(f"Store {self.path} has schema version {version}, newer than this natbench "
                           f"({SCHEMA_VERSION}). Upgrade natbench or use another --root.")
        if "runs" not in tables:
            self._engine.dispose()
            raise describe(self.path, RuntimeError("not a natbench store: no runs table"))
        if version < SCHEMA_VERSION:
            self._engine.dispose()
            self.__init__(self.path)  # an older store: upgraded once (where writable), then read

    def _version(self, conn) -> int:
        from sqlalchemy import inspect, text

        if self.is_sqlite:
            return int(conn.exec_driver_sql("PRAGMA user_version").scalar())
        if not inspect(conn).has_table("natbench_meta"):
            return 0
        v = conn.execute(text("SELECT value FROM natbench_meta WHERE key = 'schema_version'")).scalar()
        return int(v) if v is not None else 0

    # -- transactions --------------------------------------------------------------------------

    def _write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` in one write transaction; retried from scratch when it loses a race with
        a concurrent writer (unique-key violation, lock timeout, serialization failure, deadlock)."""
        from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._engine.connect() as conn:
                    conn = conn.execution_options(natbench_write=True)
                    with conn.begin():
                        return fn(conn)
            except (IntegrityError, OperationalError, DBAPIError) as e:
                transient = isinstance(e, (IntegrityError, OperationalError)) or getattr(e.orig, "sqlstate", "") in ("40001", "40P01")
                if self.is_sqlite and _sqlite_fatal(e):  # damaged file, read-only root: one line, no retry
                    from .store_guard import describe

                    raise describe(self.path, e) from None
                if not transient or attempt == WRITE_ATTEMPTS - 1:
                    raise
                log.info("store %s: write lost a race (%s); retrying", self.path, type(e.orig).__name__)
                time.sleep(0.05 * (2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _read(self, sql: str, params: dict | None = None) -> list[tuple]:
        from sqlalchemy import text
        from sqlalchemy.exc import DatabaseError

        try:
            with self._engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql), params or {}).fetchall()]
        except DatabaseError as e:  # a store damaged after it was opened (truncated, overwritten)
            from .store_guard import describe

            raise describe(self.path, e) from None

    # -- writing -------------------------------------------------------------------------------

    def record_run(
        self,
        run: RunRecord,
        results: Iterable[ResultRow],
        flags: Iterable[FlagRow],
        checks: Iterable[CheckRow],
        checkpoints: dict[str, str] | None = None,
        facts: dict | None = None,
    ) -> None:
        """Write ``run`` (status 'complete') and all its rows in ONE transaction; ``checkpoints``:
        checkpoint -> sha256 of the file evaluated; ``facts``: what readers read instead of deriving
        it (:mod:`natbench.leaderboard_facts`; replaces earlier facts of the run).

        An existing run with the same ``run_id`` is replaced atomically (its rows are deleted by
        cascade in the same transaction). Rows that repeat a key are refused before anything is
        written (ValueError); if any insert fails nothing is written and the error propagates.
        """
        # Serialise everything before touching the database so a bad value cannot half-write.
        run_row = dict(zip(_RUN_COLUMNS, (
            run.run_id, run.task, run.defense, run.profile, int(run.seed), run.config_hash,
            "complete", run.git_rev, json.dumps(dict(run.versions), sort_keys=True), run.device,
            run.started, run.finished, float(run.wall_train_s), float(run.wall_eval_s),
            json.dumps(run.config, sort_keys=True, default=str), json.dumps(list(run.suite)), run.variant,
        )))
        rows = _rows(run.run_id, results, flags, checks)

        def write(conn) -> None:
            from sqlalchemy import text

            conn.execute(text("DELETE FROM runs WHERE run_id = :r"), {"r": run.run_id})
            for table in ("results", "flags", "checks", "checkpoints"):  # the cascade, spelled out (any back end)
                conn.execute(text(f"DELETE FROM {table} WHERE run_id = :r"), {"r": run.run_id})
            conn.execute(self._t["runs"].insert(), [run_row])
            self._insert(conn, rows)
            self._set_checkpoints(conn, run.run_id, checkpoints or {})
            put_facts(conn, run.run_id, facts, replace=True)

        self._write(write)
        log.info("store %s: recorded run %s (%d results, %d flags, %d checks)", self.path,
                 run.run_id, *map(len, rows))

    def add_results(self, run_id: str, results: Iterable[ResultRow], flags: Iterable[FlagRow],
                    checks: Iterable[CheckRow], suite: list[str], checkpoints: dict[str, str] | None = None,
                    replace: Iterable[str] = (), facts: dict | None = None) -> None:
        """Add (or replace) evaluation rows of a complete run in ONE transaction (``natbench eval``).

        Rows of the same (checkpoint, attack) are replaced; ``suite`` ids not yet in the run's suite
        are appended to it, keeping its order. ``replace``: checkpoints whose earlier rows are all
        dropped (a new evaluation of a changed file, ``eval --force``); ``checkpoints``: their sha256;
        ``facts``: merged into the run's (:mod:`natbench.leaderboard_facts`).
        """
        replace = tuple(replace)
        rows = _rows(run_id, results, flags, checks)

        def write(conn) -> None:
            from sqlalchemy import text

            lock = "" if self.is_sqlite else " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE already serialises writers
            current = conn.execute(text("SELECT suite_json FROM runs WHERE run_id = :r" + lock), {"r": run_id}).scalar()
            if current is None:
                raise RunError(f"run '{run_id}' is not in {self.path}; finish it first with natbench run")
            have = json.loads(current)
            merged = have + [a for a in suite if a not in have]
            for ckpt, attack in {(r["checkpoint"], r["attack"]) for r in rows[0]}:
                conn.execute(text("DELETE FROM results WHERE run_id=:r AND checkpoint=:c AND attack=:a"),
                             {"r": run_id, "c": ckpt, "a": attack})
            for r in rows[1]:
                conn.execute(text("DELETE FROM flags WHERE run_id=:r AND checkpoint=:c AND attack=:a"),
                             {"r": run_id, "c": r["checkpoint"], "a": r["attack"]})
            for ckpt in {c["checkpoint"] for c in rows[2]}:
                conn.execute(text("DELETE FROM checks WHERE run_id=:r AND checkpoint=:c"), {"r": run_id, "c": ckpt})
            for ckpt in replace:
                for table in ("results", "flags", "checks"):
                    conn.execute(text(f"DELETE FROM {table} WHERE run_id=:r AND checkpoint=:c"), {"r": run_id, "c": ckpt})
            self._set_checkpoints(conn, run_id, checkpoints or {})
            conn.execute(text("UPDATE runs SET suite_json=:s WHERE run_id=:r"), {"s": json.dumps(merged), "r": run_id})
            self._insert(conn, rows)
            if facts:
                put_facts(conn, run_id, facts, replace=False)

        self._write(write)

    def _set_checkpoints(self, conn, run_id: str, shas: dict[str, str]) -> None:
        from sqlalchemy import text

        for ckpt, sha in shas.items():
            conn.execute(text("DELETE FROM checkpoints WHERE run_id=:r AND checkpoint=:c"), {"r": run_id, "c": ckpt})
            conn.execute(self._t["checkpoints"].insert(), [{"run_id": run_id, "checkpoint": ckpt, "sha256": sha}])

    def checkpoint_sha256(self, run_id: str) -> dict[str, str]:
        """checkpoint -> sha256 recorded with ``run_id`` (empty for runs recorded before hashes were)."""
        from sqlalchemy import inspect

        if self.readonly:  # an older store opened read-only may not have the table yet
            with self._engine.connect() as conn:
                if not inspect(conn).has_table("checkpoints"):
                    return {}
        rows = self._read("SELECT checkpoint, sha256 FROM checkpoints WHERE run_id = :r", {"r": run_id})
        return dict(rows)

    def meta(self, key: str) -> str | None:
        """The value under ``key`` in the store's key/value table ``natbench_meta`` (None when absent)."""
        from sqlalchemy import inspect

        if self.readonly:  # an older store opened read-only may not have the table
            with self._engine.connect() as conn:
                if not inspect(conn).has_table("natbench_meta"):
                    return None
        rows = self._read("SELECT value FROM natbench_meta WHERE key = :k", {"k": key})
        return rows[0][0] if rows else None

    def _insert(self, conn, rows: tuple[list, list, list]) -> None:
        for table, data in zip(("results", "flags", "checks"), rows):
            if data:
                conn.execute(self._t[table].insert(), data)

    def delete_run(self, run_id: str) -> None:
        """Delete a run and its results, flags and checks; a missing run is a no-op."""
        from sqlalchemy import text

        def write(conn) -> int:
            for table in ("results", "flags", "checks", "checkpoints"):
                conn.execute(text(f"DELETE FROM {table} WHERE run_id = :r"), {"r": run_id})
            put_facts(conn, run_id, None, replace=True)
            return conn.execute(text("DELETE FROM runs WHERE run_id = :r"), {"r": run_id}).rowcount

        log.info("store %s: deleted run %s (%d row)", self.path, run_id, self._write(write))

    # -- reading -------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        """Return the :class:`RunRecord` of ``run_id``, or ``None`` if it is not in the store."""
        rows = self._read(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id = :r", {"r": run_id})
        if not rows:
            return None
        d = dict(zip(_RUN_COLUMNS, rows[0]))
        del d["status"]
        for key in ("versions", "config", "suite"):
            d[key] = json.loads(d.pop(f"{key}_json"))
        return RunRecord(**d)

    def find_complete(self, config_hash: str) -> str | None:
        """Return the run_id of the newest complete run with ``config_hash`` (or ``None``)."""
        rows = self._read("SELECT run_id FROM runs WHERE config_hash = :h AND status = 'complete' "
                          "ORDER BY finished DESC, run_id DESC LIMIT 1", {"h": config_hash})
        return rows[0][0] if rows else None

    def runs(self, task: str | None = None) -> pd.DataFrame:
        """One row per run (optionally of one task), oldest first; ``versions`` and ``suite`` decoded.

        Columns: run_id, task, defense, profile, seed, config_hash, status, git_rev, versions,
        device, started, finished, wall_train_s, wall_eval_s, suite, variant (no config blob).
        """
        cols = [c for c in _RUN_COLUMNS if c != "config_json"]
        sql = f"SELECT {', '.join(cols)} FROM runs"
        params: dict = {}
        if task is not None:
            sql, params = sql + " WHERE task = :t", {"t": task}
        df = pd.DataFrame(self._read(sql + " ORDER BY started, run_id", params), columns=cols)
        df["versions"] = [json.loads(v) for v in df.pop("versions_json")]
        df["suite"] = [json.loads(v) for v in df.pop("suite_json")]
        out_cols = [c.removesuffix("_json") for c in cols]
        return df[out_cols].astype({"seed": "int64", "wall_train_s": float, "wall_eval_s": float})

    def results(self, task: str | None = None) -> pd.DataFrame:
        """All results of complete runs (optionally of one task), in recording order.

        Columns: run_id, task, defense, profile, variant, seed, checkpoint, attack, metric, value.
        """
        sql = (
            "SELECT r.run_id, r.task, r.defense, r.profile, r.variant, r.seed, x.checkpoint, x.attack, "
            "x.metric, x.value FROM results x JOIN runs r ON r.run_id = x.run_id "
            "WHERE r.status = 'complete'"
        )
        params: dict = {}
        if task is not None:
            sql, params = sql + " AND r.task = :t", {"t": task}
        order = " ORDER BY r.started, r.run_id, x.rowid" if self.is_sqlite else " ORDER BY r.started, r.run_id, x.ctid"
        cols = ["run_id", "task", "defense", "profile", "variant", "seed", "checkpoint", "attack",
                "metric", "value"]
        df = pd.DataFrame(self._read(sql + order, params), columns=cols)
        return df.astype({"seed": "int64", "value": float})

    def flags(self, run_id: str, checkpoint: str) -> dict[str, np.ndarray]:
        """Per-sample correctness of one checkpoint of one run: ``attack -> bool array``."""
        order = "rowid" if self.is_sqlite else "ctid"
        rows = self._read(f"SELECT attack, n, packed FROM flags WHERE run_id = :r AND checkpoint = :c ORDER BY {order}",
                          {"r": run_id, "c": checkpoint})
        return {attack: unpack_flags(n, bytes(packed)) for attack, n, packed in rows}

    def worst_case(self, run_id: str, checkpoint: str, attacks: list[str] | None = None) -> float:
        """Fraction of samples classified correctly under EVERY attack in ``attacks`` (from flags);
        ``None``: every evaluation stored for the checkpoint (clean included)."""
        flags = self.flags(run_id, checkpoint)
        if attacks is None:
            attacks = list(flags)
        if not attacks:
            raise ValueError("worst_case needs at least one attack id")
        missing = [a for a in attacks if a not in flags]
        if missing:
            raise RunError(
                f"Run '{run_id}' ({checkpoint}) has no per-sample flags for {', '.join(missing)} "
                f"in {self.path}. Available: {', '.join(flags) or '(none)'}. "
                f"Run: natbench eval {run_id} --checkpoint {checkpoint}"
            )
        arrays = [flags[a] for a in attacks]
        sizes = {a.shape[0] for a in arrays}
        if len(sizes) != 1:
            raise RunError(f"Run '{run_id}' ({checkpoint}): flags of {attacks} differ in length "
                           f"{sorted(sizes)}; re-evaluate with: natbench eval {run_id}")
        both = np.logical_and.reduce(arrays)
        return float(both.mean()) if both.size else float("nan")

    def checks(self, run_id: str) -> pd.DataFrame:
        """Sanity-check outcomes of a run. Columns: checkpoint, name, passed (bool), detail."""
        order = "rowid" if self.is_sqlite else "ctid"
        rows = self._read(f"SELECT checkpoint, name, passed, detail FROM checks WHERE run_id = :r ORDER BY {order}",
                          {"r": run_id})
        df = pd.DataFrame(rows, columns=["checkpoint", "name", "passed", "detail"])
        return df.astype({"passed": bool})

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connections (idempotent)."""
        if getattr(self, "_engine", None) is not None:
            self._engine.dispose()
            self._engine = None  # type: ignore[assignment]

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


def open_store(root: str | Path, db: str | None = None, readonly: bool = False) -> Store:
    """The store of a results root (:func:`store_url`); ``readonly`` for reading commands. The default
    file ``<root>/natbench.sqlite`` is written only where it resolves inside ``root`` (not through a
    symlink out of it); a store named by ``--db``/``$NATBENCH_DB`` is wherever it says."""
    url = store_url(root, db)
    if not readonly and url == str(Path(root) / SQLITE_NAME):
        from .safety import inside

        inside(root, url)
    return Store(url, readonly=readonly)


def _sqlite_fatal(e: Exception) -> bool:
    """A SQLite error that retrying cannot cure (not a lost race)."""
    from .store_guard import DAMAGED, NOT_WRITABLE

    low = str(getattr(e, "orig", e)).lower()
    return any(k in low for k in (*DAMAGED, *NOT_WRITABLE))


def _rows(run_id: str, results: Iterable[ResultRow], flags: Iterable[FlagRow],
          checks: Iterable[CheckRow]) -> tuple[list, list, list]:
    """Serialise rows before touching the database, so a bad value cannot half-write; a key given
    twice is a caller bug (ValueError), not a row to overwrite."""
    out = (
        [{"run_id": run_id, "checkpoint": r.checkpoint, "attack": r.attack, "metric": r.metric,
          "value": _float_or_none(r.value)} for r in results],
        [{"run_id": run_id, "checkpoint": f.checkpoint, "attack": f.attack, **dict(zip(("n", "packed"), pack_flags(f.correct)))}
         for f in flags],
        [{"run_id": run_id, "checkpoint": c.checkpoint, "name": c.name, "passed": int(bool(c.passed)),
          "detail": str(c.detail)} for c in checks],
    )
    for what, data, key in (("result", out[0], ("checkpoint", "attack", "metric")), ("flags", out[1], ("checkpoint", "attack"))):
        counts = Counter(tuple(d[k] for k in key) for d in data)
        dup = {k for k, n in counts.items() if n > 1}
        if dup:
            raise ValueError(f"run {run_id}: {what} rows repeat the key(s) {sorted(dup)}")
    return out


def _float_or_none(value: float) -> float | None:
    """SQLite has no NaN: store NaN as NULL (read back as NaN by pandas)."""
    v = float(value)
    return None if np.isnan(v) else v
