"""Training throughput of PGD-AT and NAT on ResNet-18 at CIFAR-10 shape, with and without the fast path.

Prints images/second and the epoch time extrapolated to CIFAR-10's 50 000 training images, for each
defense x {baseline, fast path}, measured side by side in this process, and the ratios. The paper's
Table 9 (RTX 4090): PGD-AT 108.6 s and NAT 129.8 s per ResNet-18 epoch.

- **baseline**: the dataset in host memory, each batch copied to the device, augmentation by a
  per-image crop/flip loop, attack noise drawn by a CPU generator and copied, fp32, contiguous
  memory format, no compilation;
- **fast path** (what ``natbench run`` does on CUDA, :func:`natbench.training.fast_path`): the
  dataset resident on the device (uint8), batched augmentation by one gather there, attack noise
  from a generator on the device, ``channels_last`` (CUDA only), fp32 as the profiles train (bf16
  autocast is a profile opt-in: ``--bf16`` times the fast path with ``training.amp=true``), optionally
  ``torch.compile`` (``--compile``).

On CPU only the batched augmentation differs (bf16, channels_last and residency are CUDA features),
so the CPU ratio is a lower bound of nothing in particular: it says the fast path costs nothing
there. Synthetic uint8 images (the timing does not depend on the pixels). The NAT adversary is a
ResNet-18 at its random initialisation (the same cost as a trained one).

    python benchmarks/gpu_epoch.py                       # CUDA when available: batch 512, 8 batches
    python benchmarks/gpu_epoch.py --device cpu --batch 32 --batches 5 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from natbench.compose import Composite
from natbench.contracts import Batch
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.runner import cuda_speedups, make_optimizer, train_step
from natbench.tasks.classification import crop_flip

CIFAR_TRAIN = 50_000


def crop_flip_loop(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The per-image augmentation loop (the baseline; same draws and pixels as ``crop_flip``)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(b)])
    out[flip] = out[flip].flip(-1)
    return out


class Config:
    """One (defense, fast path or not) training set-up; :meth:`step` runs and times one batch."""

    def __init__(self, defense: str, fast: bool, device: torch.device, batch: int, compile_: bool, n: int,
                 bf16: bool = False):
        reg = get_registry()
        r = resolve(reg, "cifar10", defense, profile="paper",
                    sets=[f"training.batch_size={batch}", *(["training.amp=true"] if bf16 else [])])
        self.task = task_kind_cls(reg, r.spec)(r.spec, None)
        torch.manual_seed(0)
        self.model = self.task.build_model().to(device)
        self.comp = Composite.build(r.plan, r.params)
        for c, dep in self.comp.dependencies():
            torch.manual_seed(1)
            c.bind(dep.role, self.task.build_model().to(device))
        self.autocast, self.channels_last = cuda_speedups(r.profile, device) if fast else (None, False)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            for c, dep in self.comp.dependencies():
                c.adversaries[dep.role].to(memory_format=torch.channels_last)
        self.opt = make_optimizer(r.profile, self.model)
        self.step_model = torch.compile(self.model) if (fast and compile_ and device.type == "cuda") else self.model
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 10, (n,), generator=g)
        resident = fast and device.type == "cuda"
        if resident:
            self.data, self.labels = self.data.to(device), self.labels.to(device)
        self.agen = torch.Generator(device=device if resident else "cpu").manual_seed(2)
        self.lgen = torch.Generator().manual_seed(3)
        self.fast, self.device, self.batch, self.n = fast, device, batch, n

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> float:
        """Seconds for one batch: sampling, augmentation, host-to-device, the training step."""
        self._sync()
        t0 = time.perf_counter()
        idx = torch.randperm(self.n, generator=self.lgen)[: self.batch].to(self.data.device)
        x = self.data[idx].float().div_(255.0)
        x = crop_flip(x, self.lgen) if self.fast else crop_flip_loop(x, self.lgen)
        b = Batch(x, self.labels[idx], idx).to(self.device)
        if self.channels_last:
            b.x = b.x.contiguous(memory_format=torch.channels_last)
        train_step(self.comp, self.step_model, b, self.task, self.opt, self.agen, self.autocast)
        self._sync()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--batches", type=int, default=8, help="timed batches per configuration (after one warm-up)")
    ap.add_argument("--compile", action="store_true", help="fast path with torch.compile")
    ap.add_argument("--bf16", action="store_true", help="fast path with bf16 autocast (profile opt-in training.amp=true)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, ResNet-18, batch {args.batch}, {args.batches} timed batches per set-up, run round-robin "
          f"(paired), epoch = {CIFAR_TRAIN} images" + (", torch.compile" if args.compile else "")
          + (", fast path in bf16" if args.bf16 else ""))
    keys = [(d, f) for d in ("pgd-at", "nat") for f in (False, True)]
    configs = {k: Config(k[0], k[1], device, args.batch, args.compile, args.batch * 4, args.bf16 and k[1]) for k in keys}
    for c in configs.values():  # warm-up (allocator, cudnn autotune, compilation)
        c.step()
    times: dict = {k: [] for k in keys}
    for _ in range(args.batches):
        for k in keys:
            times[k].append(configs[k].step())
    med = {k: statistics.median(v) for k, v in times.items()}
    for (d, f) in keys:
        s = med[(d, f)] * CIFAR_TRAIN / args.batch
        print(f"  {d:7s} {'fast path' if f else 'baseline ':9s}  {args.batch / med[(d, f)]:8.1f} images/s   "
              f"epoch {s:9.1f} s (median batch {med[(d, f)]:.3f} s)")

    def paired(a, b) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    for d in ("pgd-at", "nat"):
        print(f"{d}: fast path / baseline, median paired ratio {paired((d, True), (d, False)):.3f}")
    for f in (False, True):
        print(f"NAT / PGD-AT ({'fast path' if f else 'baseline'}): median paired ratio {paired(('nat', f), ('pgd-at', f)):.3f}"
              f"   (paper, RTX 4090: 129.8 / 108.6 = 1.195)")


if __name__ == "__main__":
    main()
