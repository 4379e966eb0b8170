"""Numerics provenance: which results of a run id were computed with which device, threads and torch.

A run's id and provenance hash cover the resolved config only, so runs stay shareable and ids stay
stable. What else decides the last bits of a result -- the device (and GPU model), torch's intra-op
thread count on CPU, the torch version -- is its *numerics* (:func:`natbench.threads.numerics`),
recorded in ``record.json`` and in the store's ``device`` column (``"cpu threads=1"``,
``"cuda threads=1 gpu=NVIDIA_H200 amp=bf16 ..."``) beside ``versions.torch``.

Running a complete config again:

- without ``--force``: the complete run is reused (one computed with the same numerics if there is
  one), and the reuse message says when its numerics differ from the current ones;
- with ``--force`` and the numerics of a recorded result: that result is computed again and replaced;
- with ``--force`` and numerics no recorded result has: a NEW result of the same run, under the id
  ``<run id>.<device>-t<threads>-torch<version>`` (its own directory, same config hash) whose
  leaderboard variant says ``numerics=...``, so it is shown beside the first result, never
  averaged with it as if it were another seed and never silently replacing it.

Stores written before threads were recorded have no ``threads=`` in ``device``: their numerics
count as unknown, so a ``--force`` rerun adds a new result rather than replacing them.
"""
from __future__ import annotations

import dataclasses
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the store's device column: ``<device> threads=N [gpu=NAME] [fast-path k=v ...]``
_TOKEN = re.compile(r"(\w+)=(\S+)")


def device_column(numerics: dict[str, Any], fast: dict[str, Any] | None = None) -> str:
    """The store's ``device`` value: device, threads, GPU model, then the CUDA fast path's settings."""
    parts = [str(numerics["device"]), f"threads={numerics['threads']}"]
    if numerics.get("gpu"):
        parts.append("gpu=" + re.sub(r"\s+", "_", str(numerics["gpu"]).strip()))
    parts += [f"{k}={v}" for k, v in (fast or {}).items()]
    return " ".join(parts)


def key(numerics: dict[str, Any]) -> tuple[str, str, str, str]:
    """What must be equal for two results of one config to be bit-identical: (device, threads, GPU, torch)."""
    gpu = re.sub(r"\s+", "_", str(numerics.get("gpu") or "").strip())
    return (str(numerics.get("device", "")), str(numerics.get("threads", "")), gpu, str(numerics.get("torch", "")))


def from_row(device: str, versions: dict[str, str]) -> dict[str, Any]:
    """The numerics of a stored run (``threads`` is ``""`` for stores written before it was recorded)."""
    first, *_ = (device or "").split(" ", 1) or [""]
    tokens = dict(_TOKEN.findall(device or ""))
    out: dict[str, Any] = {"device": first, "threads": tokens.get("threads", ""), "torch": versions.get("torch", "")}
    if tokens.get("gpu"):
        out["gpu"] = tokens["gpu"]
    return out


def tag(numerics: dict[str, Any]) -> str:
    """A short, path-safe name of ``numerics``: ``cpu-t2-torch2.14.1-cu130``, ``cuda-h200-t1-torch2.6.0``."""
    dev = re.sub(r":\d+$", "", str(numerics["device"]))
    if numerics.get("gpu"):
        dev += "-" + re.split(r"[\s_]+", str(numerics["gpu"]).strip())[-1].lower()
    torch_v = str(numerics.get("torch", ""))
    return re.sub(r"[^A-Za-z0-9.-]+", "-", f"{dev}-t{numerics['threads']}-torch{torch_v}").strip("-")


@dataclass(frozen=True)
class Existing:
    """A complete run of the config being run: its id, its numerics, whether they equal the current ones."""

    run_id: str
    numerics: dict[str, Any]
    same: bool


def find_existing(store: Any, config_hash: str, task: str, current: dict[str, Any]) -> Existing | None:
    """The complete run of ``config_hash`` computed with the ``current`` numerics, else the first
    one recorded (the plain run id), else None."""
    runs = store.runs(task)
    if runs.empty:
        return None
    rows = runs[(runs["config_hash"] == config_hash) & (runs["status"] == "complete")]
    found = [Existing(row.run_id, n, key(n) == key(current))
             for row in rows.itertuples(index=False) for n in [from_row(row.device, row.versions)]]
    if not found:
        return None
    same = [e for e in found if e.same]
    return same[0] if same else min(found, key=lambda e: (len(e.run_id), e.run_id))


def as_new_result(r: Any, current: dict[str, Any]) -> Any:
    """``r`` (a :class:`natbench.resolve.Resolved`) as a new result of the same run under ``current``
    numerics: id ``<run id>.<tag>``, leaderboard variant extended by ``numerics=<tag>``."""
    t = tag(current)
    variant = " ".join(x for x in (r.variant, f"numerics={t}") if x)
    return dataclasses.replace(r, run_id=f"{r.run_id}.{t}", variant=variant)


def describe(numerics: dict[str, Any]) -> str:
    """``cpu, 1 thread(s), torch 2.6.0`` for messages (``threads unknown`` for old stores)."""
    threads = f"{numerics['threads']} thread(s)" if numerics.get("threads") != "" else "threads unknown"
    gpu = f" ({numerics['gpu']})" if numerics.get("gpu") else ""
    return f"{numerics.get('device')}{gpu}, {threads}, torch {numerics.get('torch') or 'unknown'}"


def weights_digest(state: dict[str, Any]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and values: equal digests, equal weights
    (checkpoint *files* of the same weights differ: torch.save names the archive after the file)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        v = state[name]
        h.update(name.encode())
        if hasattr(v, "detach"):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(v).encode())
    return h.hexdigest()



def numerics_label(stored_variant: str) -> str:
    """The ``numerics=<tag>`` word of a stored leaderboard variant ("" for a run's first result)."""
    return next((w for w in (stored_variant or "").split() if w.startswith("numerics=")), "")


def with_numerics(variant: str, label: str) -> str:
    """``variant`` with the ``numerics=<tag>`` word ``label`` appended (once)."""
    if not label or label in variant.split():
        return variant
    return " ".join(x for x in (variant, label) if x)


def git_revision() -> str:
    """``git describe`` of natbench's checkout ("unknown" outside one): recorded with every run."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """The versions of natbench, python and the libraries that decide a result, recorded with every run."""
    import numpy
    import torch
    import torchvision

    from . import __version__

    out = {"natbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:
        import torchattacks

        out["torchattacks"] = torchattacks.__version__
    except Exception:  # noqa: BLE001 - only provenance
        pass
    return out
