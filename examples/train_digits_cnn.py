"""Train ``examples/digits_cnn.py`` with PGD adversarial training (Madry et al. 2018), outside natbench.

Only the data comes from natbench (the digits task's *training* split, so the test set that
``natbench eval`` uses is never seen); the loop is plain PyTorch: L-inf eps 0.2 (the digits threat
model), 10 PGD steps of 0.05 from a uniform random start, SGD lr 0.05 (x0.1 at 3/4 of the epochs),
momentum 0.9, weight decay 5e-4, batch 64. The model sees ``(x - 0.3) / 0.4`` (hence
``--normalize 0.3,0.4`` at evaluation). Saves ``{"state_dict": ..., "epochs": N}``.

Usage: python examples/train_digits_cnn.py --out digits_cnn.pt [--epochs 20] [--seed 0]
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from natbench.registry import get_registry
    from natbench.resolve import resolve, task_kind_cls

    r = resolve(get_registry(), "digits", "vanilla")
    task = task_kind_cls(get_registry(), r.spec)(r.spec, None)
    spec = importlib.util.spec_from_file_location("digits_cnn", Path(__file__).with_name("digits_cnn.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(a.seed)
    model = mod.build(10)
    norm = lambda x: (x - 0.3) / 0.4  # noqa: E731
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.75 * a.epochs)], 0.1)
    eps, alpha, steps = 0.2, 0.05, 10
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        train = task.loaders(64, gen, 360)[0]
        model.train()
        total, correct = 0, 0
        for b in train:
            x, y = b.x, b.y
            delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
            xa = (x + delta).clamp(0, 1)
            for _ in range(steps):
                xa.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(norm(xa)), y), xa)
                xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
            out = model(norm(xa))
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += len(y)
            correct += int((out.argmax(1) == y).sum())
        sched.step()
        print(f"epoch {epoch + 1}/{a.epochs}: adversarial train accuracy {100 * correct / total:.1f}% "
              f"({time.perf_counter() - t0:.0f}s)")
    torch.save({"state_dict": model.state_dict(), "epochs": a.epochs}, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
