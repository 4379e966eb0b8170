"""Reading the store: run records, results and per-sample flags as data frames, worst-case accuracy
(robust under every attack of a subset, from the flags), sanity checks and checkpoint hashes.

Results, flags and checks are read under one threat model, by default the run's own (``threat=''``,
what every reader read before schema 3); ``results(threat=None)`` reads every threat model with a
``threat`` column (:mod:`natbench.threats`)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from natbench.errors import RunError

from .store_rows import RunRecord, unpack_flags
from .store_schema import RUN_COLUMNS


class StoreQueries:
    """The reading methods of :class:`natbench.store.Store` (a mixin over :class:`~natbench.store_schema.StoreBase`)."""

    def get_run(self, run_id: str) -> RunRecord | None:
        """Return the :class:`RunRecord` of ``run_id``, or ``None`` if it is not in the store."""
        rows = self._read(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = :r", {"r": run_id})
        if not rows:
            return None
        d = dict(zip(RUN_COLUMNS, rows[0]))
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
        cols = [c for c in RUN_COLUMNS if c != "config_json"]
        sql = f"SELECT {', '.join(cols)} FROM runs"
        params: dict = {}
        if task is not None:
            sql, params = sql + " WHERE task = :t", {"t": task}
        df = pd.DataFrame(self._read(sql + " ORDER BY started, run_id", params), columns=cols)
        df["versions"] = [json.loads(v) for v in df.pop("versions_json")]
        df["suite"] = [json.loads(v) for v in df.pop("suite_json")]
        out_cols = [c.removesuffix("_json") for c in cols]
        return df[out_cols].astype({"seed": "int64", "wall_train_s": float, "wall_eval_s": float})

    def results(self, task: str | None = None, threat: str | None = "") -> pd.DataFrame:
        """All results of complete runs (optionally of one task), in recording order.

        Columns: run_id, task, defense, profile, variant, seed, checkpoint, attack, metric, value.
        ``threat``: the rows evaluated under that threat-model key (``''``: each run's own threat
        model); ``None``: under every one, with a last column ``threat``.
        """
        sql = (
            "SELECT r.run_id, r.task, r.defense, r.profile, r.variant, r.seed, x.checkpoint, x.attack, "
            "x.metric, x.value, x.threat FROM results x JOIN runs r ON r.run_id = x.run_id "
            "WHERE r.status = 'complete'"
        )
        params: dict = {}
        if task is not None:
            sql, params = sql + " AND r.task = :t", {"t": task}
        if threat is not None:
            sql, params = sql + " AND x.threat = :k", {**params, "k": threat}
        order = " ORDER BY r.started, r.run_id, x.rowid" if self.is_sqlite else " ORDER BY r.started, r.run_id, x.ctid"
        cols = ["run_id", "task", "defense", "profile", "variant", "seed", "checkpoint", "attack",
                "metric", "value", "threat"]
        df = pd.DataFrame(self._read(sql + order, params), columns=cols)
        if threat is not None:
            df = df.drop(columns=["threat"])
        return df.astype({"seed": "int64", "value": float})

    def attacks(self, run_id: str, threat: str = "") -> list[str]:
        """The result ids stored for ``run_id`` under the threat-model key ``threat``, first-seen order."""
        order = "rowid" if self.is_sqlite else "ctid"
        rows = self._read(f"SELECT attack FROM results WHERE run_id = :r AND threat = :k ORDER BY {order}",
                          {"r": run_id, "k": threat})
        return list(dict.fromkeys(a for (a,) in rows))

    def flags(self, run_id: str, checkpoint: str, threat: str = "") -> dict[str, np.ndarray]:
        """Per-sample correctness of one checkpoint of one run: ``attack -> bool array`` (``threat``:
        the threat-model key, ``''`` the run's own)."""
        order = "rowid" if self.is_sqlite else "ctid"
        rows = self._read(f"SELECT attack, n, packed FROM flags WHERE run_id = :r AND checkpoint = :c AND threat = :k "
                          f"ORDER BY {order}", {"r": run_id, "c": checkpoint, "k": threat})
        return {attack: unpack_flags(n, bytes(packed)) for attack, n, packed in rows}

    def worst_case(self, run_id: str, checkpoint: str, attacks: list[str] | None = None, threat: str = "") -> float:
        """Fraction of samples classified correctly under EVERY attack in ``attacks`` (from flags);
        ``None``: every evaluation stored for the checkpoint (clean included). ``threat``: the
        threat-model key (``''``: the run's own); attacks of two threat models are never combined."""
        flags = self.flags(run_id, checkpoint, threat)
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

    def checks(self, run_id: str, threat: str = "") -> pd.DataFrame:
        """Sanity-check outcomes of a run (under the threat-model key ``threat``, ``''`` its own).
        Columns: checkpoint, name, passed (bool), detail."""
        order = "rowid" if self.is_sqlite else "ctid"
        rows = self._read(f"SELECT checkpoint, name, passed, detail FROM checks WHERE run_id = :r AND threat = :k "
                          f"ORDER BY {order}", {"r": run_id, "k": threat})
        df = pd.DataFrame(rows, columns=["checkpoint", "name", "passed", "detail"])
        return df.astype({"passed": bool})

    def checkpoint_sha256(self, run_id: str) -> dict[str, str]:
        """checkpoint -> sha256 recorded with ``run_id`` (empty for runs recorded before hashes were)."""
        if self._lacks_table("checkpoints"):
            return {}
        rows = self._read("SELECT checkpoint, sha256 FROM checkpoints WHERE run_id = :r", {"r": run_id})
        return dict(rows)

    def meta(self, key: str) -> str | None:
        """The value under ``key`` in the store's key/value table ``natbench_meta`` (None when absent)."""
        if self._lacks_table("natbench_meta"):
            return None
        rows = self._read("SELECT value FROM natbench_meta WHERE key = :k", {"k": key})
        return rows[0][0] if rows else None

    def _lacks_table(self, table: str) -> bool:
        """An older store opened read-only may not have the tables added after schema 2 yet."""
        from sqlalchemy import inspect

        if not self.readonly:
            return False
        with self._engine.connect() as conn:
            return not inspect(conn).has_table(table)
