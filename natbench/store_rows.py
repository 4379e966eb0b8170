"""The rows a run is handed to the store as (plain dataclasses, no torch), and their serialisation.

Per-sample correctness flags are stored packed (``np.packbits``) together with their exact length
``n``, so worst-case ("robust under every attack") accuracy can be recomputed for any attack subset.
Everything is serialised before the database is touched, so a bad value cannot half-write a run.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np


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



def serialise_rows(run_id: str, results: Iterable[ResultRow], flags: Iterable[FlagRow],
          checks: Iterable[CheckRow], threat: str = "") -> tuple[list, list, list]:
    """Serialise rows before touching the database, so a bad value cannot half-write; a key given
    twice is a caller bug (ValueError), not a row to overwrite. ``threat``: the threat-model key of
    every row (``''``: the run's own; :mod:`natbench.threats`)."""
    out = (
        [{"run_id": run_id, "checkpoint": r.checkpoint, "attack": r.attack, "metric": r.metric,
          "value": _float_or_none(r.value), "threat": threat} for r in results],
        [{"run_id": run_id, "checkpoint": f.checkpoint, "attack": f.attack, **dict(zip(("n", "packed"), pack_flags(f.correct))),
          "threat": threat} for f in flags],
        [{"run_id": run_id, "checkpoint": c.checkpoint, "name": c.name, "passed": int(bool(c.passed)),
          "detail": str(c.detail), "threat": threat} for c in checks],
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
