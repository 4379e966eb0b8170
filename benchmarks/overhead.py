"""natbench's training-step overhead, measured side by side in one process (no timed assertions).

1. PGD-AT step: natbench's ``runner.train_step`` (composite loss, cache, task objective, PGD
   attack class) against a minimal hand-written PyTorch loop doing the same work -- 10-step PGD
   from a uniform start in train-mode BN, then one CE step on the adversarial batch -- on the same
   model, batch and optimizer settings. Calls alternate (natbench, hand, natbench, ...) so drift in
   machine speed hits both; the ratio of medians is printed. Target: <= 1.05.
2. Epoch time on digits: NAT (pgd-at+nat) against PGD-AT, one full training epoch each, alternating.
   (NAT paper, Table 9: 1.195x for ResNet-18 on CIFAR-10 on an RTX 4090.)

Usage: python benchmarks/overhead.py [--reps 30] [--epochs 3] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from natbench.compose import Composite, plan
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import derive_seed, make_optimizer, train_step
from natbench.tasks.classification import ClassificationTask


def hand_written_step(model, x, y, opt, gen, eps, alpha, steps):
    model.train()
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps, generator=gen)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="none").sum(), x_adv)
        x_adv = (x + (x_adv.detach() + alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    loss = F.cross_entropy(model(x_adv), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def build(defense: str):
    reg = get_registry()
    r = resolve(reg, "digits", defense, seed=0)
    task = ClassificationTask(r.spec)
    torch.manual_seed(0)
    model = task.build_model()
    comp = Composite.build(plan(defense, reg, task.capabilities), r.params)
    for c, dep in comp.dependencies():  # cost is what matters: an untrained adversary of the same shape
        c.bind(dep.role, task.build_model())
    return r, task, model, comp


def step_ratio(reps: int) -> None:
    r, task, model, comp = build("pgd-at")
    hand_model = copy.deepcopy(model)
    opt_nb, opt_hand = make_optimizer(r.profile, model), make_optimizer(r.profile, hand_model)
    batch = next(iter(task.loaders(r.profile.batch_size, torch.Generator().manual_seed(0))[0]))
    tm = task.threat
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    t_nb, t_hand = [], []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        train_step(comp, model, batch, task, opt_nb, g1)
        t1 = time.perf_counter()
        hand_written_step(hand_model, batch.x, batch.y, opt_hand, g2, tm.eps, tm.train_step_size, tm.train_steps)
        t2 = time.perf_counter()
        if i >= 3:  # warm-up
            t_nb.append(t1 - t0)
            t_hand.append(t2 - t1)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), hand_model.state_dict().values()))
    m_nb, m_hand = statistics.median(t_nb), statistics.median(t_hand)
    pair = statistics.median(a / b for a, b in zip(t_nb, t_hand))  # robust to drift in machine speed
    print(f"PGD-AT step (batch {len(batch)}, {tm.train_steps}-step PGD): natbench {m_nb * 1e3:.2f} ms, "
          f"hand-written {m_hand * 1e3:.2f} ms, ratio {pair:.3f} (median of {reps} paired ratios; "
          f"ratio of medians {m_nb / m_hand:.3f}); "
          f"bit-identical weights after {reps + 3} steps: {same}")


def epoch_ratio(epochs: int) -> None:
    runs = {d: build(d) for d in ("pgd-at", "nat")}
    opts = {d: make_optimizer(r.profile, m) for d, (r, _, m, _) in runs.items()}
    times: dict[str, list[float]] = {d: [] for d in runs}
    for e in range(epochs):
        for d, (r, task, model, comp) in runs.items():
            gen = torch.Generator().manual_seed(derive_seed(0, "epoch", e))
            loader = task.loaders(r.profile.batch_size, gen)[0]
            t0 = time.perf_counter()
            for batch in loader:
                train_step(comp, model, batch, task, opts[d], gen)
            times[d].append(time.perf_counter() - t0)
    at, nat = statistics.median(times["pgd-at"]), statistics.median(times["nat"])
    print(f"digits epoch: PGD-AT {at:.2f} s, NAT {nat:.2f} s, NAT/PGD-AT {nat / at:.3f} (median of {epochs})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    step_ratio(a.reps)
    epoch_ratio(a.epochs)
