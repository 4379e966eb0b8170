"""The store's database: the schema (:func:`metadata`), opening a SQLite file or a PostgreSQL URL,
schema versions and migrations, and the write/read transactions every store method goes through
(:class:`StoreBase`, the base of :class:`natbench.store.Store`).

Schema versions: SQLite keeps it in ``PRAGMA user_version``, PostgreSQL in the ``natbench_meta`` row
``schema_version``. 1 -> 2 added ``runs.variant``; the ``checkpoints`` table came later and is created
by ``create_all`` when an older store is first opened for writing. 2 -> 3 added the column ``threat``
to ``results``, ``flags`` (part of their primary keys) and ``checks``: the threat model a row was
evaluated under, ``''`` = the run's own (``task.threat_model`` of its config), else the key
``"<norm>:<eps>"`` of :func:`natbench.threats.key` (``natbench eval RUN --threat-model l1:5``). Every
row of an older store was computed under its run's own threat model, so the migration gives them
``''`` and their numbers, order and meaning stay as they were (:func:`_migrate_threat`: SQLite
rebuilds the two tables -- it cannot change a primary key in place -- copying the rows in their
order; PostgreSQL adds the column and swaps the primary key).
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

from natbench.errors import ConfigError, RunError

log = logging.getLogger("natbench.store")

SCHEMA_VERSION = 3  # 2: runs.variant; 3: results/flags/checks.threat
SQLITE_NAME = "natbench.sqlite"
#: attempts of a write transaction that lost a race with a concurrent writer
WRITE_ATTEMPTS = 8

RUN_COLUMNS = (
    "run_id", "task", "defense", "profile", "seed", "config_hash", "status", "git_rev",
    "versions_json", "device", "started", "finished", "wall_train_s", "wall_eval_s",
    "config_json", "suite_json", "variant",
)



def metadata():
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
    # threat: the threat model the row was evaluated under; '' = the run's own (schema 3, module docstring)
    threat = lambda: Column("threat", Text, nullable=False, server_default="")  # noqa: E731
    Table("results", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
          Column("attack", Text, nullable=False), Column("metric", Text, nullable=False),
          Column("value", Float),  # NULL stands for NaN
          threat(), PrimaryKeyConstraint("run_id", "checkpoint", "attack", "metric", "threat"))
    Table("flags", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
          Column("attack", Text, nullable=False),
          Column("n", Integer, nullable=False),  # samples; the blob holds ceil(n/8) bytes
          Column("packed", LargeBinary, nullable=False),  # np.packbits(correct)
          threat(), PrimaryKeyConstraint("run_id", "checkpoint", "attack", "threat"))
    checks = Table("checks", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
                   Column("name", Text, nullable=False), Column("passed", Integer, nullable=False),
                   Column("detail", Text, nullable=False), threat())
    Index("checks_run", checks.c.run_id)
    # sha256 of each checkpoint file the results were computed from (natbench.integrity); a table added
    # after schema 2 by create_all, so older stores gain it when first opened for writing
    Table("checkpoints", md, Column("run_id", Text, fk(), nullable=False), Column("checkpoint", Text, nullable=False),
          Column("sha256", Text, nullable=False), PrimaryKeyConstraint("run_id", "checkpoint"))
    Table("natbench_meta", md, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
    return md



class StoreBase:
    """Connecting, creating/migrating the schema and running transactions; the queries and writes are
    the mixins of :class:`natbench.store.Store`."""

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
        self._md = metadata()
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
                    if 0 < version < 3:  # written before threat models other than the run's own
                        self._migrate_threat(conn)
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

    def _migrate_threat(self, conn) -> None:
        """Schema 2 -> 3: ``threat`` (default ``''``, the run's own threat model) on results, flags
        (in their primary keys) and checks; every row kept, in its order."""
        from sqlalchemy import inspect

        insp = inspect(conn)
        have = {t for t in insp.get_table_names() if "threat" not in {c["name"] for c in insp.get_columns(t)}}
        if "checks" in have:
            conn.exec_driver_sql("ALTER TABLE checks ADD COLUMN threat TEXT NOT NULL DEFAULT ''")
        for table, key in (("results", "run_id, checkpoint, attack, metric"), ("flags", "run_id, checkpoint, attack")):
            if table not in have:  # absent, or already keyed by threat model
                continue
            if not self.is_sqlite:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN threat TEXT NOT NULL DEFAULT ''")
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {table}_pkey")
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD PRIMARY KEY ({key}, threat)")
                continue
            cols = ", ".join(c["name"] for c in inspect(conn).get_columns(table))
            conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {table}_v2")
            self._md.tables[table].create(conn)
            conn.exec_driver_sql(f"INSERT INTO {table} ({cols}, threat) SELECT {cols}, '' FROM {table}_v2 ORDER BY rowid")
            conn.exec_driver_sql(f"DROP TABLE {table}_v2")
        log.info("store %s: migrated to schema 3 (results keyed by threat model; earlier rows: the run's own)", self.path)

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

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connections (idempotent)."""
        if getattr(self, "_engine", None) is not None:
            self._engine.dispose()
            self._engine = None  # type: ignore[assignment]

    def __enter__(self) -> "StoreBase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


def _sqlite_fatal(e: Exception) -> bool:
    """A SQLite error that retrying cannot cure (not a lost race)."""
    from .store_guard import DAMAGED, NOT_WRITABLE

    low = str(getattr(e, "orig", e)).lower()
    return any(k in low for k in (*DAMAGED, *NOT_WRITABLE))

