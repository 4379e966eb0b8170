"""Checkpoints are the evidence behind a run's results: their sha256 is recorded with the run and
verified before they are evaluated again.

- ``natbench run`` records the sha256 of ``best.pt`` and ``last.pt`` in the store (table
  ``checkpoints``) together with the results computed from them (and in ``record.json``).
- ``natbench eval`` (and a run that completes a finished run's suite, a report, a dependency model)
  hashes each checkpoint first and refuses one that differs from the recorded file: one line. With
  ``eval --force`` a changed checkpoint is a new evaluation instead: all earlier results, flags and
  checks of that checkpoint are dropped and replaced by the new ones, and the new hash is recorded,
  so a row never mixes numbers of two models.
- Runs recorded before hashes were stored have none; their first evaluation records them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import RunError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Verified:
    """The checkpoints about to be evaluated: their hashes, and those to evaluate from scratch."""

    sha256: dict[str, str] = field(default_factory=dict)
    replace: list[str] = field(default_factory=list)


def verify(store, run_id: str, run_dir: Path, checkpoints: Iterable[str], *, force: bool = False) -> Verified:
    """Hash each checkpoint of ``run_dir`` and compare it with the one recorded for ``run_id``.

    A missing file or (without ``force``) a changed one is a :class:`RunError`; with ``force`` a
    changed checkpoint is listed in ``replace``."""
    recorded = store.checkpoint_sha256(run_id) if store is not None else {}
    out = Verified()
    for ckpt in checkpoints:
        path = Path(run_dir) / f"{ckpt}.pt"
        if not path.is_file():
            raise RunError(f"run {run_id}: checkpoint {path}: file not found; restore the file, or train the run "
                           f"again with: natbench run ... --force")
        sha = sha256_file(path)
        out.sha256[ckpt] = sha
        old = recorded.get(ckpt)
        if old is not None and old != sha:
            if not force:
                raise RunError(f"run {run_id}: checkpoint {path} is not the file its results were computed from "
                               f"(sha256 {sha[:12]}..., recorded {old[:12]}...); restore it, or evaluate it as a new "
                               f"model with: natbench eval {run_id} --force (replaces all {ckpt} results)")
            out.replace.append(ckpt)
    return out


def verify_one(store, run_id: str, run_dir: Path, ckpt: str) -> None:
    """:func:`verify` for one checkpoint about to be loaded (a report, a dependency model)."""
    verify(store, run_id, run_dir, (ckpt,))
