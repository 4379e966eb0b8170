"""Intra-op threads: 1 thread against all available cores, on an idle and on a busy machine.

Each measurement is a fresh process (OpenMP reads its settings at start-up) that trains ``--steps``
PGD-AT steps (10-step PGD + one SGD step, batch 64) of natbench's digits task through
``runner.train_step`` and prints its wall time. Settings run round-robin (1 thread, all cores, all
cores with ``OMP_WAIT_POLICY=PASSIVE``), ``--reps`` times, first idle, then with one CPU-burning
process per core in the background ("busy": what a shared machine looks like). Medians are printed
side by side. The CLI default of ``--threads`` (natbench.threads) was chosen from these numbers.

Usage: python benchmarks/threads.py [--steps 40] [--reps 3] [--busy-only | --idle-only]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from natbench.compose import Composite, plan
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import make_optimizer, train_step
from natbench.tasks.classification import ClassificationTask
reg = get_registry()
r = resolve(reg, "digits", "pgd-at", seed=0)
task = ClassificationTask(r.spec)
torch.manual_seed(0)
model = task.build_model()
comp = Composite.build(plan("pgd-at", reg, task.capabilities), r.params)
opt = make_optimizer(r.profile, model)
gen = torch.Generator().manual_seed(0)
batches = list(task.loaders(r.profile.batch_size, gen)[0])
train_step(comp, model, batches[0], task, opt, gen)  # warm-up
t0 = time.perf_counter()
for i in range(int(sys.argv[2])):
    train_step(comp, model, batches[i % len(batches)], task, opt, gen)
print(time.perf_counter() - t0)
"""


def _burn() -> None:
    while True:
        pass


def measure(threads: int, steps: int, passive: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(steps)], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def series(steps: int, reps: int, cores: int) -> dict[str, float]:
    settings = {"1 thread": (1, False), f"{cores} threads": (cores, False), f"{cores} threads, passive": (cores, True)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(reps):
        for name, (n, passive) in settings.items():
            times[name].append(measure(n, steps, passive))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--busy-only", action="store_true")
    ap.add_argument("--idle-only", action="store_true")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} available cores, load average before: {os.getloadavg()[0]:.2f}")
    for load in [x for x in ("idle", "busy") if not (x == "busy" and a.idle_only) and not (x == "idle" and a.busy_only)]:
        burners = [mp.Process(target=_burn, daemon=True) for _ in range(cores if load == "busy" else 0)]
        for p in burners:
            p.start()
        time.sleep(0.5)
        try:
            med = series(a.steps, a.reps, cores)
        finally:
            for p in burners:
                p.terminate()
                p.join()
        base = med["1 thread"]
        print(f"{load:5s} ({len(burners)} burners): " + "  ".join(f"{k}: {v:.2f}s ({v / base:.2f}x)" for k, v in med.items()))


if __name__ == "__main__":
    main()
