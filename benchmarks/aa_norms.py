"""AutoAttack in L2 and L1: natbench's ``autoattack`` against the original package, per sample, in one process.

For a digits model trained by the CLI (quick profile, under ``--root``; trained first when missing), on
the test images at each ``--norms`` entry ``norm:eps``, at generator seed ``--seed`` (default 0):

- ``original``: the authors' ``pyautoattack.AutoAttack(norm="L2"/"L1", version="standard", seed=0)``, run
  as is (natbench's ``autoattack-original`` with the norm bound);
- ``natbench``: natbench's ``autoattack`` with the norm bound (early stop on, the default);
- ``natbench, no early stop`` (``--no-early-stop``): the same with ``early_stop=False``; its x' must equal
  the original's, so the script also prints the largest |x'_natbench - x'_original| of that row.

Columns: robust accuracy, per-sample robust flags that differ from the original's (robust here only /
fooled here only), CPU seconds (``time.process_time``), wall seconds, forward and backward rows
(counted as in ``benchmarks/eval_speed.py``). No timing assertions anywhere: this is a benchmark.

Usage (1 thread, as the handoff's numbers)::

    python benchmarks/aa_norms.py --root /tmp/apgd-root --norms l2:1.0,l1:2.0 --threads 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import load, measure  # noqa: E402

from natbench.attacks._base import NORMS, with_norm  # noqa: E402
from natbench.attacks.autoattack import AutoAttack  # noqa: E402
from natbench.attacks.autoattack_original import AutoAttackOriginal  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/apgd-root", help="results root holding (or receiving) the quick run")
    ap.add_argument("--defense", default="pgd-at", help="the digits defense whose quick run is attacked")
    ap.add_argument("--norms", default="l2:1.0,l1:2.0", help="comma-separated norm:eps (norms: l2, l1, linf)")
    ap.add_argument("--n", type=int, default=359, help="digits test images (all: 359)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="the generator seed of every evaluation (natbench eval's "
                    "seed for suite attack ID is natbench.training.derive_seed(run seed, 'eval', ID))")
    ap.add_argument("--no-early-stop", action="store_true", help="also run natbench with early_stop=False")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, x, y, _, nc = load(Path(a.root), "digits", a.defense, None, a.n)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    rows = []
    for item in a.norms.split(","):
        norm, _, eps_s = item.partition(":")
        if norm not in NORMS or not eps_s:
            raise SystemExit(f"--norms: expected norm:eps with norm in {', '.join(NORMS)}, got {item!r}")
        eps = float(eps_s)
        runs = {"original": with_norm(AutoAttackOriginal(), norm, "--norms"),
                "natbench": with_norm(AutoAttack(), norm, "--norms")}
        if a.no_early_stop:
            runs["natbench, no early stop"] = with_norm(AutoAttack(AutoAttack.Params(early_stop=False)), norm, "--norms")
        res = {}
        for name, atk in runs.items():
            res[name] = measure(atk, model, x, y, eps, nc, a.seed)
            orig = res["original"]
            m = res[name]
            diff = (int((m["robust"] & ~orig["robust"]).sum()), int((~m["robust"] & orig["robust"]).sum()))
            gap = float((m["adv"] - orig["adv"]).abs().max()) if name.endswith("no early stop") else None
            rows.append((f"{norm}:{eps:g}", name, m["robust"].float().mean().item(), diff, m["cpu"], m["wall"],
                         m["fwd"], m["bwd"], m["cpu"] / orig["cpu"], gap))
            print_table(rows, a.threads, len(y), clean, a.defense, a.seed)


def print_table(rows, threads: int, n: int, clean: float, defense: str, seed: int) -> None:
    print(f"\ndigits {defense} (quick), n = {n}, clean {100 * clean:.2f} %, {threads} thread(s), torch "
          f"{torch.__version__}, seed {seed}\n")
    print("| threat model | evaluation | robust % | flags differing (robust here only / fooled here only) | CPU s "
          "| wall s | forward rows | backward rows | CPU / original | max abs x' difference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tm, name, rob, diff, cpu, wall, fwd, bwd, ratio, gap in rows:
        gap_s = "-" if gap is None else f"{gap:.3g}"
        print(f"| {tm} | {name} | {100 * rob:.2f} | {sum(diff)} ({diff[0]} / {diff[1]}) | {cpu:.1f} | {wall:.1f} "
              f"| {fwd} | {bwd} | {ratio:.2f} | {gap_s} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
