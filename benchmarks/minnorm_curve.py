"""Robust accuracy at several eps from one minimum-norm run, against fixed-eps attacks run once per eps.

On a finished classification run's checkpoint (e.g. a quick-trained digits model), on its whole test
set, in one process:

- ``fmn``: natbench's FMN (defaults: 100 steps) in ``--norm``, run *once*; its per-sample minimal
  norms give the accuracy at every eps of the grid (``accuracy@<e>``, natbench.attacks._minnorm);
- ``cw-l2`` (L2 only, ``--cw``): natbench's CW-L2 with its defaults, likewise once;
- ``pgd-20``: PGD with 20 steps of eps/4 and a random start, run once *per eps* (L2: the steps of
  torchattacks.PGDL2, natbench.attacks._l2; L-inf: natbench's PGD);
- ``apgd-ce``: APGD-CE (100 steps, natbench's, in ``--norm``) once per eps, a stronger fixed-eps reference.

A minimum-norm attack's accuracy@e is an upper bound on the robust accuracy at e like any attack's;
"close to or below PGD-20" is what a sound one shows. Columns: accuracy (%) per eps, CPU seconds
(``time.process_time``) of each attack summed over the grid. No assertions: a benchmark.

Usage (after ``natbench run --task digits --defense vanilla --profile quick --suite smoke --root R``)::

    OMP_NUM_THREADS=1 python benchmarks/minnorm_curve.py --root R --run RUN_ID --norm l2 \\
        --eps 0.25 0.5 0.75 1 1.5 2 --cw
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from natbench.attacks._base import with_norm
from natbench.attacks._l2 import pgd_l2
from natbench.attacks._minnorm import grid_label, norm_metrics
from natbench.attacks.apgd import APGDCE
from natbench.attacks.cw_l2 import CWL2
from natbench.attacks.fmn import FMN
from natbench.attacks.pgd import pgd_linf
from natbench.contracts import LogitsObjective
from natbench.run_model import load_run


def test_set(task):
    _, _, test = task.loaders(512, torch.Generator().manual_seed(0), 512)
    xs, ys = zip(*((b.x, b.y) for b in test))
    return torch.cat(xs), torch.cat(ys)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--norm", default="l2", choices=("l2", "linf", "l1"))
    ap.add_argument("--eps", type=float, nargs="+", required=True)
    ap.add_argument("--cw", action="store_true", help="also CW-L2 (L2 only) at its defaults")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rm = load_run(a.root, a.run, a.checkpoint)
    model, (x, y) = rm.model, test_set(rm.task)
    obj = LogitsObjective(model, y, int(logits_dim(model, x)))
    rows: dict[str, tuple[list[float], float]] = {"clean": ([accuracy(model, x, y)] * len(a.eps), 0.0)}
    minnorm = [("fmn", FMN())] + ([("cw-l2", CWL2())] if a.cw and a.norm == "l2" else [])
    for name, atk in minnorm:
        with_norm(atk, a.norm, name)
        t = time.process_time()
        atk(obj, x, eps=max(a.eps))
        secs = time.process_time() - t
        m = norm_metrics(atk.last_norms, tuple(a.eps))  # what the task records as accuracy@<e>, median_norm
        rows[name] = ([m[grid_label(e)] for e in a.eps], secs)
        rows[name + " median norm"] = ([m["median_norm"]] * len(a.eps), 0.0)
    ce = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    for name in ("pgd-20", "apgd-ce"):
        accs, secs = [], 0.0
        for i, e in enumerate(a.eps):
            g = torch.Generator().manual_seed(i)
            t = time.process_time()
            if name == "pgd-20" and a.norm == "l2":
                xa = pgd_l2(ce, x, eps=e, steps=20, step_size=e / 4, random_start=True, generator=g)
            elif name == "pgd-20" and a.norm == "linf":
                xa = pgd_linf(ce, x, eps=e, steps=20, step_size=e / 4, random_start=True, generator=g)
            elif name == "pgd-20":
                continue
            else:
                xa = with_norm(APGDCE(), a.norm, name)(obj, x, eps=e, generator=g)
            secs += time.process_time() - t
            accs.append(accuracy(model, xa, y))
        if accs:
            rows[name] = (accs, secs)
    head = f"{'attack':<22}" + "".join(f"{'@' + format(e, 'g'):>9}" for e in a.eps) + f"{'CPU s':>9}"
    print(f"{a.run} [{a.checkpoint}], {a.norm}, {len(x)} test images, {a.threads} thread(s)")
    print(head)
    for name, (vals, secs) in rows.items():
        fmt = (lambda v: f"{v:9.3f}") if name.endswith("median norm") else (lambda v: f"{100 * v:9.2f}")
        print(f"{name:<22}" + "".join(fmt(v) for v in vals) + (f"{secs:9.1f}" if secs else ""))


def logits_dim(model, x) -> int:
    with torch.no_grad():
        return model(x[:1]).shape[1]


if __name__ == "__main__":
    main()
