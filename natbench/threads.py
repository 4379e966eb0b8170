"""Intra-op CPU threads (``--threads N`` / ``$NATBENCH_THREADS``) and the numerics of a result.

The thread count changes how torch splits its reductions, so on CPU results are bit-identical only
for the same thread count (and device, and torch version). It is therefore recorded with every
run (:func:`numerics`) -- but it is *not* part of the provenance hash: run ids stay what they were.

Default: :data:`DEFAULT_THREADS` = 1, chosen from ``benchmarks/threads.py`` (30 PGD-AT steps on
digits, batch 64, medians of 3 fresh processes; 2-core machine shared with other users):

=========================  ========  =========  ===================================
machine                    1 thread  2 threads  2 threads, ``OMP_WAIT_POLICY=PASSIVE``
=========================  ========  =========  ===================================
quiet (load 0.8-2)         4.91 s    3.84 s     5.05 s
busy (load ~12, 2 burners) 56.9 s    620.6 s    22.9 s
=========================  ========  =========  ===================================

All cores win 22 % on an idle machine and lose 11x on a busy one (OpenMP's workers spin while they
wait for a core). Passive waiting removes the catastrophe but also the idle gain, and its busy-machine
"gain" is CPU share taken from the other users. One thread is never catastrophic, and it keeps the
default numbers independent of how many cores a machine has (threads change CPU results), so it is
the default; ``--threads N`` (or ``$NATBENCH_THREADS``) opts in to more on a machine of one's
own. ``$OMP_NUM_THREADS``, when set, is honoured before the default.
"""
from __future__ import annotations

import os
from typing import Any

ENV = "NATBENCH_THREADS"
#: intra-op threads when neither --threads, $NATBENCH_THREADS nor $OMP_NUM_THREADS says otherwise
DEFAULT_THREADS = 1


def requested(cli_value: int | None) -> int:
    """The thread count asked for: ``--threads``, else ``$NATBENCH_THREADS``, else
    ``$OMP_NUM_THREADS``, else :data:`DEFAULT_THREADS`; a bad value is a user error (exit 2)."""
    from .errors import ConfigError

    if cli_value is not None:
        if cli_value < 1:
            raise ConfigError(f"--threads {cli_value}: expected a number of threads >= 1, e.g. --threads 1")
        return int(cli_value)
    for var in (ENV, "OMP_NUM_THREADS"):
        raw = os.environ.get(var, "").strip()
        if raw:
            try:
                n = int(raw)
            except ValueError:
                n = 0
            if n < 1:
                raise ConfigError(f"${var}={raw!r}: expected a number of threads >= 1; unset it or e.g. export {var}=1")
            return n
    return DEFAULT_THREADS


def apply(cli_value: int | None) -> int:
    """Set torch's intra-op threads to :func:`requested` and export it (``$NATBENCH_THREADS``,
    ``$OMP_NUM_THREADS``) so that child processes (torchrun ranks, sweep jobs) use the same; returns it."""
    n = requested(cli_value)
    os.environ[ENV] = str(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def numerics(device: Any) -> dict[str, Any]:
    """What besides the config decides a result's last bits: device (with the GPU's name on CUDA),
    intra-op threads, torch version. Recorded in ``record.json`` and the store's ``device`` column."""
    import torch

    dev = str(device)
    out: dict[str, Any] = {"device": dev, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if dev.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    return out
