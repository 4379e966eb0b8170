"""natbench's FAB-T and Square in L2 and L1 vs the original (``pyautoattack`` 0.2.0), side by side.

The model is the small CNN of ``tests/conftest.py:digits_at_cnn`` (2 clean + 10 PGD-AT epochs at L-inf
eps 0.2 on sklearn's digits, trained here in a few seconds), attacked on the digits test set with the
AutoAttack standard settings of each attack:

- FAB-T: ``FABAttack_PT(norm=..., targeted=True, n_target_classes=9, n_iter=100, n_restarts=1)`` vs
  natbench's ``fab-t`` with its default early stop (an image leaves once fooled within eps) and
  without it (``early_stop=False``: the original's minimal points);
- Square: ``SquareAttack(norm=..., n_queries=5000, p_init=0.8, n_restarts=1, resc_schedule=False,
  seed=0)`` vs natbench's ``square`` with a CPU generator seeded 0, on the first ``--n-square`` images.

Prints the fooled counts, the per-sample disagreements of the fooled flags, how many returned points are
bitwise identical, the largest distance in the norm, and wall seconds of both. No assertions: a
benchmark (tests/test_fab.py and tests/test_square.py hold the checks).

Usage: python benchmarks/fab_square_norms.py [--l2 0.4] [--l1 1.0] [--n-square 120] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn


def digits_at_cnn():
    """The recipe of tests/conftest.py:digits_at_cnn: (model, test x, test y)."""
    from natbench.attacks.pgd import pgd_linf
    from natbench.data.digits import read

    d = read()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(12):
        perm = torch.randperm(len(d.train_x), generator=g)
        for i in range(0, len(perm), 64):
            xb, yb = d.train_x[perm[i:i + 64]], d.train_y[perm[i:i + 64]]
            if epoch >= 2:
                model.eval()
                xb = pgd_linf(lambda z: F.cross_entropy(model(z), yb, reduction="none"), xb, eps=0.2,
                              steps=5, step_size=0.2 / 2.5, random_start=True, generator=g)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, d.test_x, d.test_y


class Logits:
    def __init__(self, model, y):
        self.model, self.y, self.num_classes = model, y, 10

    def __call__(self, x):
        return self.model(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--l2", type=float, default=0.4, help="L2 eps")
    ap.add_argument("--l1", type=float, default=1.0, help="L1 eps")
    ap.add_argument("--n-square", type=int, default=120, help="first n test images for Square")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    from natbench.attacks._base import lp_norms, with_norm
    from natbench.attacks.fab import FABT
    from natbench.attacks.square import Square

    model, x, y = digits_at_cnn()

    def fooled(a_, y_):
        with torch.no_grad():
            return model(a_).argmax(1) != y_

    print(f"digits test: {len(x)} images, {int(fooled(x, y).sum())} clean-misclassified; threads {a.threads}")
    for norm, eps in (("l2", a.l2), ("l1", a.l1)):
        t0 = time.perf_counter()
        ref = FABAttack_PT(model, norm=norm.upper(), n_restarts=1, n_iter=100, eps=eps, targeted=True,
                           n_target_classes=9, seed=0, device="cpu").perturb(x, y)
        t_ref = time.perf_counter() - t0
        for early in (True, False):
            t0 = time.perf_counter()
            ours = with_norm(FABT(FABT.Params(early_stop=early)), norm, "benchmark")(Logits(model, y), x, eps=eps)
            t_ours = time.perf_counter() - t0
            fr, fo = fooled(ref, y), fooled(ours, y)
            same = int((ours == ref).flatten(1).all(1).sum())
            print(f"FAB-T {norm} eps {eps} early_stop={early}: fooled original {int(fr.sum())} natbench {int(fo.sum())}, "
                  f"flags differ on {int((fr != fo).sum())}/{len(x)}, identical points {same}/{len(x)}, "
                  f"max {norm} {float(lp_norms(ours - x, norm).max()):.4f}; {t_ref:.1f} s vs {t_ours:.1f} s", flush=True)
    xs, ys = x[:a.n_square], y[:a.n_square]
    for norm, eps in (("l2", a.l2), ("l1", a.l1)):
        t0 = time.perf_counter()
        ref = SquareAttack(model, norm=norm.upper(), n_queries=5000, eps=eps, p_init=0.8, n_restarts=1, seed=0,
                           loss="margin", resc_schedule=False, device="cpu").perturb(xs, ys)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = with_norm(Square(), norm, "benchmark")(Logits(model, ys), xs, eps=eps,
                                                      generator=torch.Generator().manual_seed(0))
        t_ours = time.perf_counter() - t0
        fr, fo = fooled(ref, ys), fooled(ours, ys)
        print(f"Square {norm} eps {eps} (5000 queries): fooled original {int(fr.sum())} natbench {int(fo.sum())}, "
              f"flags differ on {int((fr != fo).sum())}/{len(xs)}, fooled points identical {torch.equal(ours[fr], ref[fr])}, "
              f"max {norm} {float(lp_norms(ours - xs, norm).max()):.4f}; {t_ref:.1f} s vs {t_ours:.1f} s", flush=True)


if __name__ == "__main__":
    main()
