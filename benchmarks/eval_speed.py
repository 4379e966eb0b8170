"""Evaluation cost: the original AutoAttack against natbench's ``autoattack``, side by side in one process.

For each model (the three digits demo models vanilla, pgd-at, pgd-at+nat and a CIFAR-shape
ResNet-18 trained on the CIFAR-10 fixture; all trained by the CLI under ``--root``), on the same
test images at the task's eps, seed 0:

- ``original``: the authors' ``pyautoattack.AutoAttack(version="standard", seed=0)``, run as is
  (natbench's ``autoattack-original`` attack);
- ``natbench``: natbench's ``autoattack`` (fooled points leave every component's batch);
- ``natbench, no early stop``: the same with ``early_stop=False`` (natbench before issue 17);
- ``floor``: the original on the finally-robust points alone (they get the full budget of all four
  attacks in any implementation that gives the original's answer);
- ``natbench, seed 1``: natbench's ``autoattack`` (the original's answer per sample) with seed 1: how
  many flags AutoAttack itself changes with its random starts, the scale for ``malt``'s disagreement;
- ``malt``: natbench's ``malt`` with its defaults (MALT, Melamed et al., NeurIPS 2024: APGD-T on the
  9 targets ranked by mesoscopic almost-linearity), a different attack: its flags may differ from
  the original's, and the table says by how many.

Columns: robust accuracy, per-sample robust flags that differ from the original's, CPU seconds
(``time.process_time``: all threads of the process), wall seconds, and the rows (images) the model
saw in forward passes and in backward (input-gradient) passes, counted by a wrapper module around
the model. No timing assertions anywhere: this is a benchmark.

Usage (trains the models first when ``--root`` lacks them; 1 thread as the README's table)::

    python benchmarks/eval_speed.py --root /tmp/evalspeed-bench --data-root /tmp/evalspeed-cifar --threads 1
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from natbench.attacks.autoattack import AutoAttack
from natbench.attacks.autoattack_original import AutoAttackOriginal
from natbench.attacks.malt import MALT
from natbench.contracts import LogitsObjective
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls

MODELS = {  # label -> (task, defense)
    "digits vanilla": ("digits", "vanilla"),
    "digits pgd-at": ("digits", "pgd-at"),
    "digits pgd-at+nat": ("digits", "pgd-at+nat"),
    "cifar10 resnet18 vanilla": ("cifar10", "vanilla"),
}

#: --evaluations key -> (row label, the attack); the original is always run (every row is compared with it).
EVALUATIONS = {
    "natbench": ("natbench", lambda: AutoAttack()),
    "no-early-stop": ("natbench, no early stop", lambda: AutoAttack(AutoAttack.Params(early_stop=False))),
    "seed1": ("natbench, seed 1", lambda: AutoAttack()),
    "malt": ("malt", lambda: MALT()),
}
SEEDS = {"seed1": 1}  # --evaluations key -> generator seed (0 otherwise)
FLOOR = "floor (original, robust points only)"


class Counted(nn.Module):
    """The model, counting the rows of its forward passes and of the backward passes through it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.fwd = self.bwd = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fwd += len(x)
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(self._count_bwd)
        return out

    def _count_bwd(self, g: torch.Tensor) -> None:
        self.bwd += len(g)


def train(root: Path, task: str, defense: str, data_root: str | None) -> None:
    cmd = [sys.executable, "-m", "natbench", "run", "--task", task, "--defense", defense, "--profile", "quick",
           "--suite", "smoke", "--root", str(root)]
    if data_root:
        cmd += ["--data-root", data_root]
    print("training:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def load(root: Path, task: str, defense: str, data_root: str | None, n: int):
    """(model in eval mode, test x[:n], test y[:n], eps, num_classes) of the complete quick run."""
    def checkpoints() -> list[Path]:  # the quick runs' last checkpoints, newest last (any provenance hash)
        return sorted(root.glob(f"{task}-{defense}-s0-*/last.pt"), key=lambda p: p.stat().st_mtime)

    if not checkpoints():
        train(root, task, defense, data_root)
    ckpt = checkpoints()[-1]
    reg = get_registry()
    r = resolve(reg, task, defense, profile="quick")
    t = task_kind_cls(reg, r.spec)(r.spec, Path(data_root) if data_root else None)
    model = t.build_model()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _, _, test = t.loaders(n, torch.Generator().manual_seed(0), n)
    b = next(iter(test))
    return model, b.x[:n], b.y[:n], float(t.threat.eps), int(r.spec.model.num_classes)


def measure(attack, model: nn.Module, x, y, eps: float, num_classes: int, seed: int = 0):
    counted = Counted(model)
    c0, w0 = time.process_time(), time.perf_counter()
    adv = attack(LogitsObjective(counted, y, num_classes), x, eps=eps, generator=torch.Generator().manual_seed(seed))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    fwd, bwd = counted.fwd, counted.bwd
    with torch.no_grad():
        robust = model(adv).argmax(1) == y
    return {"robust": robust, "cpu": cpu, "wall": wall, "fwd": fwd, "bwd": bwd, "adv": adv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/evalspeed-bench", help="results root holding (or receiving) the quick runs")
    ap.add_argument("--data-root", default=None, help="CIFAR-10 data (natbench data fixture cifar10 --out DIR)")
    ap.add_argument("--n", type=int, default=359, help="digits test images (all: 359)")
    ap.add_argument("--cifar-n", type=int, default=20, help="CIFAR test images (ResNet-18 on CPU is slow)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated labels of " + ", ".join(MODELS))
    ap.add_argument("--evaluations", default=",".join([*EVALUATIONS, "floor"]),
                    help="comma-separated, besides the original: " + ", ".join([*EVALUATIONS, "floor"]))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(a.root)
    wanted = a.evaluations.split(",")
    unknown = sorted(set(wanted) - {*EVALUATIONS, "floor"})
    if unknown:
        raise SystemExit(f"--evaluations: unknown {', '.join(unknown)}; choose from {', '.join([*EVALUATIONS, 'floor'])}")
    rows = []
    for label in a.models.split(","):
        task, defense = MODELS[label]
        if task == "cifar10" and not a.data_root:
            print(f"skipping {label}: no --data-root", file=sys.stderr)
            continue
        model, x, y, eps, nc = load(root, task, defense, a.data_root, a.cifar_n if task == "cifar10" else a.n)
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        orig = measure(AutoAttackOriginal(), model, x, y, eps, nc)
        runs = {"original": orig}
        for key, (name, make) in EVALUATIONS.items():
            if key in wanted:
                runs[name] = measure(make(), model, x, y, eps, nc, SEEDS.get(key, 0))
        keep = orig["robust"]
        if "floor" in wanted and keep.any():
            floor = measure(AutoAttackOriginal(), model, x[keep], y[keep], eps, nc)
            floor["robust"] = None
            runs[FLOOR] = floor
        for name, m in runs.items():
            rob = m["robust"]
            diff = None if rob is None else (int((rob & ~orig["robust"]).sum()), int((~rob & orig["robust"]).sum()))
            rows.append((label, len(y), clean, name, None if rob is None else rob.float().mean().item(),
                         diff, m["cpu"], m["wall"], m["fwd"], m["bwd"], m["cpu"] / orig["cpu"]))
        print_table(rows, a.threads)


def print_table(rows, threads: int) -> None:
    print(f"\n{threads} thread(s), torch {torch.__version__}, seed 0 unless the row says otherwise\n")
    print("| model | n | clean % | evaluation | robust % | flags differing from the original (robust here only "
          "/ fooled here only) | CPU s | wall s "
          "| forward rows | backward rows | CPU / original |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, n, clean, name, rob, diff, cpu, wall, fwd, bwd, ratio in rows:
        rob_s = "-" if rob is None else f"{100 * rob:.2f}"
        diff_s = "-" if diff is None else f"{sum(diff)} ({diff[0]} / {diff[1]})"
        print(f"| {label} | {n} | {100 * clean:.2f} | {name} | {rob_s} | {diff_s} | {cpu:.1f} | {wall:.1f} | "
              f"{fwd} | {bwd} | {ratio:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
