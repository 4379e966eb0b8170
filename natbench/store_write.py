"""Writing to the store: a whole run in one transaction, results added to a run, a run deleted.

Writes are idempotent per (run, checkpoint, attack, threat model): recording a run replaces any
earlier row set of that run (under every threat model), adding results replaces those of the same
(checkpoint, attack, threat model).
"""
from __future__ import annotations

import json
import logging
from typing import Iterable

from natbench.errors import RunError
from natbench.leaderboard_facts import put as put_facts

from .store_rows import CheckRow, FlagRow, ResultRow, RunRecord, serialise_rows
from .store_schema import RUN_COLUMNS

log = logging.getLogger("natbench.store")


class StoreWrites:
    """The writing methods of :class:`natbench.store.Store` (a mixin over :class:`~natbench.store_schema.StoreBase`)."""

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
        run_row = dict(zip(RUN_COLUMNS, (
            run.run_id, run.task, run.defense, run.profile, int(run.seed), run.config_hash,
            "complete", run.git_rev, json.dumps(dict(run.versions), sort_keys=True), run.device,
            run.started, run.finished, float(run.wall_train_s), float(run.wall_eval_s),
            json.dumps(run.config, sort_keys=True, default=str), json.dumps(list(run.suite)), run.variant,
        )))
        rows = serialise_rows(run.run_id, results, flags, checks)

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
                    replace: Iterable[str] = (), facts: dict | None = None, threat: str = "") -> None:
        """Add (or replace) evaluation rows of a complete run in ONE transaction (``natbench eval``).

        Rows of the same (checkpoint, attack) are replaced; ``suite`` ids not yet in the run's suite
        are appended to it, keeping its order. ``replace``: checkpoints whose earlier rows are all
        dropped (a new evaluation of a changed file, ``eval --force``: under every threat model);
        ``checkpoints``: their sha256; ``facts``: merged into the run's (:mod:`natbench.leaderboard_facts`).
        ``threat``: the threat-model key the rows were evaluated under (``''``: the run's own; another
        one, :func:`natbench.threats.key`, replaces only rows of that key and leaves the run's suite,
        which lists its own evaluations, as it is).
        """
        replace = tuple(replace)
        rows = serialise_rows(run_id, results, flags, checks, threat)

        def write(conn) -> None:
            from sqlalchemy import text

            lock = "" if self.is_sqlite else " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE already serialises writers
            current = conn.execute(text("SELECT suite_json FROM runs WHERE run_id = :r" + lock), {"r": run_id}).scalar()
            if current is None:
                raise RunError(f"run '{run_id}' is not in {self.path}; finish it first with natbench run")
            have = json.loads(current)
            merged = have + [a for a in suite if a not in have] if not threat else have
            key = {"r": run_id, "t": threat}
            for ckpt, attack in {(r["checkpoint"], r["attack"]) for r in rows[0]}:
                conn.execute(text("DELETE FROM results WHERE run_id=:r AND checkpoint=:c AND attack=:a AND threat=:t"),
                             {**key, "c": ckpt, "a": attack})
            for r in rows[1]:
                conn.execute(text("DELETE FROM flags WHERE run_id=:r AND checkpoint=:c AND attack=:a AND threat=:t"),
                             {**key, "c": r["checkpoint"], "a": r["attack"]})
            for ckpt in {c["checkpoint"] for c in rows[2]}:
                conn.execute(text("DELETE FROM checks WHERE run_id=:r AND checkpoint=:c AND threat=:t"), {**key, "c": ckpt})
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

