"""The results store: one SQLite file (WAL mode) holding runs, results, per-sample flags and checks.

The schema lives here (:data:`SCHEMA`, ``PRAGMA user_version`` = :data:`SCHEMA_VERSION`). The store
never imports the runner or torch: a run is handed over as plain dataclasses and written in ONE
transaction, so a reader sees either the whole run or none of it.

Per-sample correctness flags are stored packed (``np.packbits``) together with their exact length
``n``, so worst-case ("robust under every attack") accuracy can be recomputed for any attack subset.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from natbench.errors import RunError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: runs.variant

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, task TEXT NOT NULL,
    defense TEXT NOT NULL,                         -- canonical defense name (leaderboard key)
    profile TEXT NOT NULL, seed INTEGER NOT NULL,
    config_hash TEXT NOT NULL,                     -- hash of the resolved config
    status TEXT NOT NULL DEFAULT 'complete',
    git_rev TEXT NOT NULL, versions_json TEXT NOT NULL, device TEXT NOT NULL,
    started TEXT NOT NULL, finished TEXT NOT NULL,  -- ISO-8601 UTC
    wall_train_s REAL NOT NULL, wall_eval_s REAL NOT NULL,
    config_json TEXT NOT NULL,                     -- resolved config
    suite_json TEXT NOT NULL,                      -- attack ids in suite order, "clean" first
    variant TEXT NOT NULL DEFAULT ''               -- --set values differing from the spec ("nat.omega=0.06")
);
CREATE INDEX IF NOT EXISTS runs_task ON runs(task);
CREATE INDEX IF NOT EXISTS runs_config_hash ON runs(config_hash);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    checkpoint TEXT NOT NULL, attack TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL,                                    -- NULL stands for NaN
    PRIMARY KEY (run_id, checkpoint, attack, metric)
);
CREATE TABLE IF NOT EXISTS flags (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    checkpoint TEXT NOT NULL, attack TEXT NOT NULL,
    n INTEGER NOT NULL,                            -- samples; the blob holds ceil(n/8) bytes
    packed BLOB NOT NULL,                          -- np.packbits(correct)
    PRIMARY KEY (run_id, checkpoint, attack)
);
CREATE TABLE IF NOT EXISTS checks (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    checkpoint TEXT NOT NULL, name TEXT NOT NULL, passed INTEGER NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checks_run ON checks(run_id);
"""

_RUN_COLUMNS = (
    "run_id", "task", "defense", "profile", "seed", "config_hash", "status", "git_rev",
    "versions_json", "device", "started", "finished", "wall_train_s", "wall_eval_s",
    "config_json", "suite_json", "variant",
)


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
    """SQLite results store (WAL mode, foreign keys on). Safe to open from several processes."""

    def __init__(self, path: str | Path):
        """Open (creating the parent directory and schema if needed) the store at ``path``."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=30)
        self._conn.execute("PRAGMA foreign_keys = ON")
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("store %s: could not enable WAL (journal_mode=%s)", self.path, mode)
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise RunError(
                f"Store {self.path} has schema version {version}, newer than this natbench "
                f"({SCHEMA_VERSION}). Upgrade natbench or use another --root."
            )
        with self._conn:
            if version == 1:  # a store written before variants existed: every run is its spec's default
                self._conn.execute("ALTER TABLE runs ADD COLUMN variant TEXT NOT NULL DEFAULT ''")
            self._conn.executescript(SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- writing -------------------------------------------------------------------------------

    def record_run(
        self,
        run: RunRecord,
        results: Iterable[ResultRow],
        flags: Iterable[FlagRow],
        checks: Iterable[CheckRow],
    ) -> None:
        """Write ``run`` (status 'complete') and all its rows in ONE transaction.

        An existing run with the same ``run_id`` is replaced atomically (its rows are deleted by
        cascade in the same transaction). If any insert fails nothing is written and the error
        propagates.
        """
        # Serialise everything before touching the database so a bad value cannot half-write.
        run_row = (
            run.run_id, run.task, run.defense, run.profile, int(run.seed), run.config_hash,
            "complete", run.git_rev, json.dumps(dict(run.versions), sort_keys=True), run.device,
            run.started, run.finished, float(run.wall_train_s), float(run.wall_eval_s),
            json.dumps(run.config, sort_keys=True, default=str), json.dumps(list(run.suite)), run.variant,
        )
        rows = _rows(run.run_id, results, flags, checks)
        placeholders = ", ".join("?" * len(_RUN_COLUMNS))
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run.run_id,))
            self._conn.execute(
                f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({placeholders})", run_row
            )
            self._insert(rows)
        log.info("store %s: recorded run %s (%d results, %d flags, %d checks)", self.path,
                 run.run_id, *map(len, rows))

    def add_results(self, run_id: str, results: Iterable[ResultRow], flags: Iterable[FlagRow],
                    checks: Iterable[CheckRow], suite: list[str]) -> None:
        """Add (or replace) evaluation rows of a complete run in ONE transaction (``natbench eval``).

        Rows of the same (checkpoint, attack) are replaced; ``suite`` ids not yet in the run's suite
        are appended to it, keeping its order.
        """
        run = self.get_run(run_id)
        if run is None:
            raise RunError(f"run '{run_id}' is not in {self.path}; finish it first with natbench run")
        rows = _rows(run_id, results, flags, checks)
        merged = list(run.suite) + [a for a in suite if a not in run.suite]
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for _, ckpt, attack, *_ in rows[0]:
                self._conn.execute("DELETE FROM results WHERE run_id=? AND checkpoint=? AND attack=?", (run_id, ckpt, attack))
            for _, ckpt, attack, *_ in rows[1]:
                self._conn.execute("DELETE FROM flags WHERE run_id=? AND checkpoint=? AND attack=?", (run_id, ckpt, attack))
            for ckpt in {c[1] for c in rows[2]}:
                self._conn.execute("DELETE FROM checks WHERE run_id=? AND checkpoint=?", (run_id, ckpt))
            self._conn.execute("UPDATE runs SET suite_json=? WHERE run_id=?", (json.dumps(merged), run_id))
            self._insert(rows)

    def _insert(self, rows: tuple[list, list, list]) -> None:
        result_rows, flag_rows, check_rows = rows
        self._conn.executemany(
            "INSERT INTO results (run_id, checkpoint, attack, metric, value) VALUES (?, ?, ?, ?, ?)", result_rows)
        self._conn.executemany(
            "INSERT INTO flags (run_id, checkpoint, attack, n, packed) VALUES (?, ?, ?, ?, ?)", flag_rows)
        self._conn.executemany(
            "INSERT INTO checks (run_id, checkpoint, name, passed, detail) VALUES (?, ?, ?, ?, ?)", check_rows)

    def delete_run(self, run_id: str) -> None:
        """Delete a run and (by cascade) its results, flags and checks; a missing run is a no-op."""
        with self._conn:
            cur = self._conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        log.info("store %s: deleted run %s (%d row)", self.path, run_id, cur.rowcount)

    # -- reading -------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        """Return the :class:`RunRecord` of ``run_id``, or ``None`` if it is not in the store."""
        row = self._conn.execute(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        d = dict(zip(_RUN_COLUMNS, row))
        del d["status"]
        for key in ("versions", "config", "suite"):
            d[key] = json.loads(d.pop(f"{key}_json"))
        return RunRecord(**d)

    def find_complete(self, config_hash: str) -> str | None:
        """Return the run_id of the newest complete run with ``config_hash`` (or ``None``)."""
        row = self._conn.execute(
            "SELECT run_id FROM runs WHERE config_hash = ? AND status = 'complete' "
            "ORDER BY finished DESC, run_id DESC LIMIT 1", (config_hash,)
        ).fetchone()
        return None if row is None else row[0]

    def runs(self, task: str | None = None) -> pd.DataFrame:
        """One row per run (optionally of one task), oldest first; ``versions`` and ``suite`` decoded.

        Columns: run_id, task, defense, profile, seed, config_hash, status, git_rev, versions,
        device, started, finished, wall_train_s, wall_eval_s, suite (no config blob).
        """
        cols = [c for c in _RUN_COLUMNS if c != "config_json"]
        sql = f"SELECT {', '.join(cols)} FROM runs"
        params: tuple = ()
        if task is not None:
            sql, params = sql + " WHERE task = ?", (task,)
        rows = self._conn.execute(sql + " ORDER BY started, run_id", params).fetchall()
        df = pd.DataFrame(rows, columns=cols)
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
        params: tuple = ()
        if task is not None:
            sql, params = sql + " AND r.task = ?", (task,)
        rows = self._conn.execute(sql + " ORDER BY r.started, r.run_id, x.rowid", params).fetchall()
        cols = ["run_id", "task", "defense", "profile", "variant", "seed", "checkpoint", "attack",
                "metric", "value"]
        df = pd.DataFrame(rows, columns=cols)
        return df.astype({"seed": "int64", "value": float})

    def flags(self, run_id: str, checkpoint: str) -> dict[str, np.ndarray]:
        """Per-sample correctness of one checkpoint of one run: ``attack -> bool array``."""
        rows = self._conn.execute(
            "SELECT attack, n, packed FROM flags WHERE run_id = ? AND checkpoint = ? ORDER BY rowid",
            (run_id, checkpoint),
        ).fetchall()
        return {attack: unpack_flags(n, packed) for attack, n, packed in rows}

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
        rows = self._conn.execute(
            "SELECT checkpoint, name, passed, detail FROM checks WHERE run_id = ? ORDER BY rowid",
            (run_id,),
        ).fetchall()
        df = pd.DataFrame(rows, columns=["checkpoint", "name", "passed", "detail"])
        return df.astype({"passed": bool})

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"


def _rows(run_id: str, results: Iterable[ResultRow], flags: Iterable[FlagRow],
          checks: Iterable[CheckRow]) -> tuple[list, list, list]:
    """Serialise rows before touching the database, so a bad value cannot half-write."""
    return (
        [(run_id, r.checkpoint, r.attack, r.metric, _float_or_none(r.value)) for r in results],
        [(run_id, f.checkpoint, f.attack, *pack_flags(f.correct)) for f in flags],
        [(run_id, c.checkpoint, c.name, int(bool(c.passed)), str(c.detail)) for c in checks],
    )


def _float_or_none(value: float) -> float | None:
    """SQLite has no NaN: store NaN as NULL (read back as NaN by pandas)."""
    v = float(value)
    return None if np.isnan(v) else v
