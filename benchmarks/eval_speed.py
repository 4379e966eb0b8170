"""AutoAttack evaluation cost: natbench's `autoattack` against the same components run naively.

Three evaluations of the same model on the same test images, side by side in one process:

A. natbench's ``autoattack`` (standard: APGD-CE 100, APGD-T 100 x 9 targets, FAB-T 9 targets,
   Square 5000 queries), each component only on the points still robust after the previous ones;
B. the same natbench components, each on *all* points, worst case per sample afterwards (naive);
C. torchattacks' ``MultiAttack`` of its APGD, APGDT, FAB and Square configured to the same
   settings (its shipped ``AutoAttack`` wrapper is not the standard version: notes Sec. 8.2).
   MultiAttack also attacks only the points still robust.

Prints wall time and robust accuracy of each, and the ratios B/A and C/A. The model is the digits
task's small CNN after a few epochs of PGD-AT (so that a good share of points is robust: the
saving of A over B grows with robust accuracy). No timing assertions anywhere: this is a benchmark.

Usage: python benchmarks/eval_speed.py [--n 200] [--epochs 3] [--threads 1] [--no-torchattacks]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from natbench.attacks.apgd import APGDCE, APGDT
from natbench.attacks.autoattack import AutoAttack
from natbench.attacks.fab import FABT
from natbench.attacks.square import Square
from natbench.compose import Composite
from natbench.contracts import Batch
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.runner import derive_seed, make_optimizer, train_step


def trained_model(epochs: int):
    reg = get_registry()
    r = resolve(reg, "digits", "pgd-at", profile="quick")
    task = task_kind_cls(reg, r.spec)(r.spec, None)
    torch.manual_seed(derive_seed(0, "init"))
    model = task.build_model()
    comp = Composite.build(r.plan, r.params)
    opt = make_optimizer(r.profile, model)
    for e in range(epochs):
        gen = torch.Generator().manual_seed(e)
        train, _, _ = task.loaders(64, gen)
        for b in train:
            train_step(comp, model, b, task, opt, gen)
    return task, model.eval()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="test images (digits has 359)")
    ap.add_argument("--epochs", type=int, default=3, help="PGD-AT epochs of the evaluated model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-torchattacks", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task, model = trained_model(a.epochs)
    _, _, test = task.loaders(64, torch.Generator().manual_seed(0), 10_000)
    b = next(iter(test))
    x, y = b.x[: a.n], b.y[: a.n]
    eps = task.threat.eps
    obj = task.objective(model, Batch(x, y), "logits")
    with torch.no_grad():
        clean = (model(x).argmax(1) == y)
    print(f"digits small CNN after {a.epochs} PGD-AT epochs, {len(y)} test images, eps {eps}, "
          f"clean accuracy {100 * clean.float().mean():.2f}%, {torch.get_num_threads()} thread(s)")

    def robust(x_adv):
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y) & clean

    t_a, x_a = timed(lambda: AutoAttack()(obj, x, eps=eps, generator=torch.Generator().manual_seed(0)))
    ra = robust(x_a)

    def naive():
        ok = clean.clone()
        for atk in (APGDCE(), APGDT(), FABT(), Square()):
            ok &= robust(atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(0)))
        return ok

    t_b, rb = timed(naive)
    rows = [("A natbench autoattack (robust points only)", t_a, ra), ("B same components, all points", t_b, rb)]
    if not a.no_torchattacks:
        import torchattacks

        atks = [torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
                torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0),
                torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                 n_classes=10, seed=0),
                torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8,
                                    resc_schedule=False, seed=0)]
        multi = torchattacks.MultiAttack(atks)
        t_c, x_c = timed(lambda: multi(x, y))
        rows.append(("C torchattacks MultiAttack, same settings", t_c, robust(x_c)))
    for name, t, r in rows:
        print(f"{name:45s} {t:8.1f} s   robust accuracy {100 * r.float().mean():6.2f}%   ratio to A {t / t_a:5.2f}")
    print("per-sample agreement A vs B:", f"{100 * np.mean((ra == rb).numpy()):.1f}%")


if __name__ == "__main__":
    main()
