"""NAT's training cost against PGD-AT: one epoch of each, side by side in one process (no assertions).

Both runs use natbench's own training step (``runner.train_step`` on a ``compose.Composite`` planned
from the registry: ``pgd-at`` and ``pgd-at+nat``), the same initial weights, the same random data
(fixed seed; CIFAR shape 3x32x32, or the digits shape 1x8x8 for ``small_cnn``), the task's
training attack (10-step PGD) and optimizer. NAT gets a bound vanilla adversary of the same
architecture (random weights: the cost does not depend on them). The two epochs alternate
(A B A B ...) ``--repeats`` times so drift in machine speed hits both; the median of the paired
ratios NAT/PGD-AT is the headline (NAT paper, Table 9: 1.195 for ResNet-18 on CIFAR-10, 1.113 for
WRN-34-10, one RTX 4090 epoch).

The floor: NAT adds one clean forward/backward of the target and the adversary's forwards on x and
x' (one no-grad forward on 2B rows). Both are timed on their own and the ratio they imply,
``(PGD-AT epoch + batches * (fwd/bwd + adversary fwd)) / PGD-AT epoch``, is printed as the floor.

On CUDA: bf16 autocast and channels_last (``--no-amp`` turns both off), ``torch.backends.cudnn.benchmark``.

``--joint-forward`` sets ``nat.joint_forward=true`` (the target's clean and adversarial logits from
one train-mode forward on cat([x, x']), through NAT's ``pre_loss`` hook; PGD-AT reuses the cached
``logits_adv``).

On a CPU shared with other work, use ``--threads 1``: with OpenMP threads competing for cores a
step can be many times slower and the ratio is noise. CPU runs also print the ratio by process CPU
time (``time.process_time``), which does not count time the OS gave to other processes.

Usage: python benchmarks/nat_overhead.py [--arch resnet18] [--batch 512] [--n-images N] [--repeats R]
       [--device auto|cpu|cuda] [--joint-forward] [--no-amp] [--threads N]
Quick CPU checks: --arch small_cnn --batch 64 --n-images 512 --repeats 15 --threads 1   (~1 min)
                  --arch resnet18 --batch 32 --n-images 32 --repeats 4 --threads 1     (~4 min)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from natbench.compose import Composite
from natbench.contracts import Batch, LossOut
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.runner import make_optimizer, pick_device, train_step

PAPER = {"resnet18": (108.6, 129.8), "wrn34_10": (1047.2, 1165.8)}  # Table 9: PGD-AT s, NAT s (one epoch, RTX 4090)
SPATIAL = {"digits": 8, "cifar10": 32, "cifar100": 32}


# ------------------------------------------------------------------ set-up
def build_run(defense: str, a, task_name: str, device: torch.device, init_state: dict):
    reg = get_registry()
    sets = [f"model.arch={a.arch}", f"training.batch_size={a.batch}"]
    if "nat" in defense and a.joint_forward:
        sets.append("nat.joint_forward=true")
    r = resolve(reg, task_name, defense, sets=sets)
    task = task_kind_cls(reg, r.spec)(r.spec, None)
    model = task.build_model()
    model.load_state_dict(init_state)
    comp = Composite.build(r.plan, r.params)
    fmt = torch.channels_last if a.amp else torch.contiguous_format
    for c, dep in comp.dependencies():  # a vanilla adversary of the same arch; random weights cost the same
        torch.manual_seed(1)
        c.bind(dep.role, task.build_model().to(device, memory_format=fmt))
    model = model.to(device, memory_format=fmt)
    return {"r": r, "task": task, "model": model, "comp": comp, "opt": make_optimizer(r.profile, model)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_epoch(run, X, Y, batch: int, gen, device, amp: bool, limit: int | None = None) -> tuple[float, float, LossOut]:
    """One pass over ``X`` (or its first ``limit`` batches): (wall seconds, process CPU seconds, last LossOut)."""
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if amp else None
    # runner.train_step runs the forward under ``autocast=`` and the backward outside it (the runner's loop)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = None
    for k, i in enumerate(range(0, len(X), batch)):
        if limit is not None and k >= limit:
            break
        out = train_step(run["comp"], run["model"], Batch(X[i:i + batch], Y[i:i + batch]), run["task"], run["opt"],
                         gen, autocast=ac)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def floor_parts(run_nat, X, Y, batch: int, device, amp: bool, clock, reps: int = 3) -> tuple[float, float]:
    """Median seconds (by ``clock``) of the work NAT adds per step: a target train-mode CE
    forward/backward on B rows, and the adversary's no-grad forward on 2B rows."""
    model = copy.deepcopy(run_nat["model"])
    nat = run_nat["comp"].regularizers[0]
    task = run_nat["task"]
    x, y = X[:batch], Y[:batch]
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    fb, af = [], []
    for _ in range(reps + 1):
        model.train()
        sync(device)
        t0 = clock()
        with ctx:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        sync(device)
        t1 = clock()
        with ctx:
            nat.adversary_logits(Batch(x, y), task, (x, x))
        sync(device)
        t2 = clock()
        fb.append(t1 - t0)
        af.append(t2 - t1)
    return statistics.median(fb[1:]), statistics.median(af[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", help="model.arch (small_cnn runs on the digits shape 1x8x8)")
    ap.add_argument("--task", default=None, help="task spec for shape/threat/optimizer (default: digits for small_cnn, else cifar10)")
    ap.add_argument("--size", type=int, default=None, help="image height = width (default: 8 for digits, 32 for CIFAR)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--n-images", type=int, default=None, help="images per measured epoch (default 1024 on CPU, 5120 on CUDA)")
    ap.add_argument("--repeats", type=int, default=None, help="A/B pairs (default 3 on CPU, 5 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps of each before timing (default 1 CPU, 3 CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--joint-forward", action="store_true", help="nat.joint_forward=true (one target forward on cat([x, x']))")
    ap.add_argument("--no-amp", action="store_true", help="on CUDA: no bf16 autocast, no channels_last")
    ap.add_argument("--no-floor", action="store_true", help="skip timing the floor's pieces")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    a.amp = cuda and not a.no_amp
    n = a.n_images or (5120 if cuda else 1024)
    repeats = a.repeats or (5 if cuda else 3)
    warmup = 3 if (a.warmup is None and cuda) else (1 if a.warmup is None else a.warmup)
    task_name = a.task or ("digits" if a.arch == "small_cnn" else "cifar10")
    if cuda:
        torch.backends.cudnn.benchmark = True

    reg = get_registry()
    r0 = resolve(reg, task_name, "pgd-at", sets=[f"model.arch={a.arch}"])
    spec = r0.spec.model
    hw = a.size or SPATIAL.get(task_name, 32)
    torch.manual_seed(a.seed)
    init = task_kind_cls(reg, r0.spec)(r0.spec, None).build_model().state_dict()
    runs = {d: build_run(d, a, task_name, device, init) for d in ("pgd-at", "pgd-at+nat")}
    g = torch.Generator().manual_seed(a.seed)
    X = torch.rand(n, spec.in_channels, hw, hw, generator=g)
    Y = torch.randint(0, spec.num_classes, (n,), generator=g)
    X, Y = X.to(device), Y.to(device)
    if a.amp:
        X = X.contiguous(memory_format=torch.channels_last)
    gens = {d: (torch.Generator(device) if cuda else torch.Generator()).manual_seed(a.seed + 1) for d in runs}
    nb = -(-n // a.batch)
    tm = r0.spec.threat_model
    print(f"torch {torch.__version__}, device {device}{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, "
          f"{torch.get_num_threads()} threads, amp bf16+channels_last: {a.amp}")
    print(f"{a.arch} on {task_name} shape {spec.in_channels}x{hw}x{hw}, batch {a.batch}, {n} images/epoch ({nb} steps), "
          f"{tm.train_steps}-step PGD, {repeats} A/B pairs, nat.joint_forward={a.joint_forward}")

    for d, run in runs.items():  # warm-up (allocator, cudnn autotune, oneDNN primitive caches)
        run_epoch(run, X, Y, a.batch, gens[d], device, a.amp, limit=warmup)
    times: dict[str, list[float]] = {d: [] for d in runs}
    cpu: dict[str, list[float]] = {d: [] for d in runs}
    last: dict[str, LossOut] = {}
    for i in range(repeats):
        for d, run in runs.items():  # A B A B ...
            dt, dc, last[d] = run_epoch(run, X, Y, a.batch, gens[d], device, a.amp)
            times[d].append(dt)
            cpu[d].append(dc)
        print(f"  pair {i + 1}: PGD-AT {times['pgd-at'][-1]:.2f} s, NAT {times['pgd-at+nat'][-1]:.2f} s, "
              f"ratio {times['pgd-at+nat'][-1] / times['pgd-at'][-1]:.3f}"
              + ("" if cuda else f" (CPU time ratio {cpu['pgd-at+nat'][-1] / cpu['pgd-at'][-1]:.3f})"), flush=True)
    at, nat = statistics.median(times["pgd-at"]), statistics.median(times["pgd-at+nat"])
    ratios = [b / c for b, c in zip(times["pgd-at+nat"], times["pgd-at"])]
    scale = 50_000 / n
    print(f"epoch of {n} images: PGD-AT median {at:.2f} s {[round(t, 2) for t in times['pgd-at']]}, "
          f"NAT median {nat:.2f} s {[round(t, 2) for t in times['pgd-at+nat']]}")
    print(f"NAT/PGD-AT: median paired ratio {statistics.median(ratios):.3f} "
          f"(pairs {', '.join(f'{x:.3f}' for x in ratios)}; ratio of medians {nat / at:.3f})")
    if not cuda:  # process CPU time ignores time the OS gave to other processes (use --threads 1 on a busy machine)
        cratios = [b / c for b, c in zip(cpu["pgd-at+nat"], cpu["pgd-at"])]
        print(f"NAT/PGD-AT by process CPU time: median paired ratio {statistics.median(cratios):.3f} "
              f"(pairs {', '.join(f'{x:.3f}' for x in cratios)}; PGD-AT {statistics.median(cpu['pgd-at']):.2f} s, "
              f"NAT {statistics.median(cpu['pgd-at+nat']):.2f} s CPU)")
    print(f"extrapolated to 50000 images: PGD-AT {at * scale:.1f} s, NAT {nat * scale:.1f} s per epoch")
    if a.arch in PAPER:
        pa, pn = PAPER[a.arch]
        print(f"paper (Table 9, RTX 4090, CIFAR-10): PGD-AT {pa} s, NAT {pn} s, ratio {pn / pa:.3f}")
    if not a.no_floor:  # by wall clock on CUDA, by process CPU time on CPU
        clock, base, measured = ((time.perf_counter, at, statistics.median(ratios)) if cuda else
                                 (time.process_time, statistics.median(cpu["pgd-at"]), statistics.median(cratios)))
        fb, af = floor_parts(runs["pgd-at+nat"], X, Y, a.batch, device, a.amp, clock)
        floor = (base + nb * (fb + af)) / base
        print(f"floor: + one target fwd/bwd ({fb * 1e3:.1f} ms) + adversary fwd on 2B ({af * 1e3:.1f} ms) per step "
              f"-> {floor:.3f} ({'wall' if cuda else 'CPU time'}); measured/floor {measured / floor:.3f}")
    print(f"last NAT step parts: {', '.join(f'{k}={v:.4g}' for k, v in last['pgd-at+nat'].parts.items())}")


if __name__ == "__main__":
    main()
