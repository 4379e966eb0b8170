"""Training one run: resume from ``state.pt``, one epoch at a time, validate, select and save.

- ``state.pt`` (model, optimizer, components, history) is written atomically after every epoch, so a
  killed run started again with the same config resumes from its last finished epoch. Every epoch
  draws its randomness (shuffling, attack starts, dropout) from generators seeded by ``(seed, epoch)``:
  a resumed run gives exactly the numbers of an uninterrupted one.
- ``best.pt`` is the epoch with the highest validation metric (robust accuracy under a cheap PGD, or
  clean accuracy for defenses whose ``select_on`` is "clean"); ``last.pt`` the final epoch. The
  validation split is carved from the training set; the test set is only used in evaluation.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .compose import Composite
from .contracts import Batch, LossOut
from .distributed import Dist
from .safety import atomic_save, load_state


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def lr_at(profile, epoch: float) -> float:
    """The learning rate at (fractional) ``epoch``: ``lr_points`` interpolated linearly (a cyclic
    schedule, set every iteration) or the constant ``lr``, times ``gamma`` per milestone passed."""
    if profile.lr_points:
        ts = [t for t, _ in profile.lr_points]
        lrs = [v for _, v in profile.lr_points]
        base = float(np.interp(epoch, ts, lrs))
    else:
        base = profile.lr
    return base * profile.gamma ** sum(int(epoch) >= m for m in profile.milestones)


def momentum_at(profile, epoch: float) -> float:
    """SGD momentum at (fractional) ``epoch``: with ``cycle_momentum = [base, max]`` it moves against
    ``lr_points`` as torch's ``CyclicLR(cycle_momentum=True)``: ``max - (max - base) * s`` with ``s``
    the position of the interpolated lr between the lowest and the highest lr of ``lr_points``
    (milestone decays do not move it: the references divide the lr by hand, the scheduler's momentum
    stays). Without it, the profile's constant ``momentum``."""
    if not profile.cycle_momentum:
        return profile.momentum
    base, top = profile.cycle_momentum
    lrs = [v for _, v in profile.lr_points]
    lo, hi = min(lrs), max(lrs)
    s = 0.0 if hi == lo else (float(np.interp(epoch, [t for t, _ in profile.lr_points], lrs)) - lo) / (hi - lo)
    return top - (top - base) * s


def make_optimizer(profile, model: torch.nn.Module) -> torch.optim.Optimizer:
    if profile.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=profile.lr, momentum=profile.momentum, weight_decay=profile.weight_decay)


def train_step(composite: Composite, model: torch.nn.Module, batch: Batch, task: Any,
               optimizer: torch.optim.Optimizer, generator: torch.Generator,
               autocast: Any = None, dist: Dist | None = None, n_global: int | None = None) -> LossOut:
    """One optimisation step of the composite loss (what ``benchmarks/overhead.py`` times):
    prepare + loss (under ``autocast`` when given), backward, step, restore, after-step hooks.

    Data-parallel (``dist`` active; ``batch`` is this rank's shard of a global batch of ``n_global``):
    the gradients (and a weight perturbation's) are averaged over ranks before the step, and the
    BatchNorm buffers are broadcast from rank 0 after it (see :mod:`natbench.distributed`)."""
    parallel = dist is not None and dist.active
    if parallel and composite.perturbation is not None:
        composite.perturbation.grad_sync = lambda g: dist.average(g, len(batch), n_global)
    with autocast if autocast is not None else contextlib.nullcontext():
        out = composite.step_loss(model, batch, task, generator)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if parallel:
        dist.average_gradients(model, len(batch), n_global)
    optimizer.step()
    composite.restore()
    composite.after_step(model)
    if parallel and not _has_sync_bn(model):
        dist.broadcast_buffers(model)
    return out


def _has_sync_bn(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def cuda_speedups(profile, device: torch.device) -> tuple[Any, bool]:
    """``(autocast context or None, channels_last)`` for training on ``device``. bf16 autocast (which
    covers the inner attack too) only on CUDA and only when the profile opts in (``amp``; default off:
    the references all train in fp32); channels_last on CUDA when the profile asks (its default).
    Both off on CPU, where they are slower or unsupported."""
    if device.type != "cuda":
        return None, False
    return (torch.autocast("cuda", dtype=torch.bfloat16) if profile.amp else None), bool(profile.channels_last)


def fast_path(profile, task: Any, device: torch.device) -> dict[str, Any]:
    """The CUDA fast path a run uses (recorded in its provenance): an in-memory dataset resident
    on the GPU with augmentation and attack noise drawn there (``gpu_resident``), bf16 autocast
    (``amp``), ``channels_last``, optionally ``torch.compile``. Empty on CPU."""
    if device.type != "cuda":
        return {}
    out: dict[str, Any] = {"amp": "bf16" if profile.amp else "off", "channels_last": bool(profile.channels_last),
                           "tf32": "+".join(k for k, on in (("matmul", torch.backends.cuda.matmul.allow_tf32),
                                                            ("cudnn", torch.backends.cudnn.allow_tf32)) if on) or "off"}
    resident = getattr(task, "resident", None)
    out["gpu_resident"] = bool(profile.gpu_resident and callable(resident) and resident(device))
    out["compile"] = bool(profile.compile)
    return out


def validate(r: Any, task: Any, model: torch.nn.Module, loader: Any, epoch: int, device: torch.device) -> dict[str, float]:
    """Clean and robust (the spec's cheap selection PGD, in the threat model's norm) headline metric on the
    validation split. L1 has no PGD: the selection attack is then APGD-CE in L1 with the same steps when
    the ``apgd-ce`` attack lists ``l1``, else ``val_robust`` is NaN (only ``vanilla`` trains in an L1 threat
    model, and it selects on clean accuracy)."""
    from .attacks._base import with_norm
    from .attacks.pgd import PGD

    norm = r.spec.threat_model.norm
    gen = torch.Generator().manual_seed(derive_seed(r.seed, "val", epoch))
    metric = getattr(task, "headline_metric", "accuracy")  # re-id: mAP (its PGD runs on the embedding)
    clean = task.evaluate(model, loader, None, device=device).metrics[metric]
    if norm == "l1":
        from .registry import get_registry

        cls = get_registry().load("attacks", "apgd-ce")
        if "l1" not in getattr(cls, "norms", ("linf",)):
            return {"val_clean": clean, "val_robust": float("nan")}
        attack = cls(cls.Params(steps=r.spec.selection.steps))
    else:
        attack = PGD(PGD.Params(steps=r.spec.selection.steps, step_size=r.spec.selection.step_size))
    with_norm(attack, norm, "selection")
    kw = {} if norm != "l1" else {"objective": attack.objective_kind}  # APGD-CE reads the logits
    robust = task.evaluate(model, loader, attack, generator=gen, device=device, **kw).metrics[metric]
    return {"val_clean": clean, "val_robust": robust}


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous (not channels_last) copy of the state dict: checkpoints load anywhere."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


@dataclass
class Trained:
    """What training hands to the record: the per-epoch history, the CUDA fast path used, and the
    training time of earlier (killed, resumed) attempts -- the run's cost is the sum of all."""

    history: list[dict]
    fast: dict[str, Any]
    resumed_s: float


class Trainer:
    """Trains one run (``r`` with its bound ``composite``) into ``run_dir``: ``best.pt``, ``last.pt``,
    ``state.pt`` and ``training.png``. Rank 0 writes the files; every rank trains its shard."""

    def __init__(self, r: Any, task: Any, composite: Composite, run_dir: Path, *, device: torch.device,
                 dist: Dist, reporter: Any, sync_bn: bool = False):
        self.r, self.task, self.composite, self.run_dir = r, task, composite, run_dir
        self.device, self.dist, self.reporter, self.sync_bn = device, dist, reporter, sync_bn
        self.prof = r.profile
        self.state_path = run_dir / "state.pt"

    def train(self) -> Trained:
        r, prof, task, dist = self.r, self.prof, self.task, self.dist
        torch.manual_seed(derive_seed(r.seed, "init"))
        model = task.build_model().to(self.device)
        if self.sync_bn and dist.active:
            from .distributed import sync_batchnorm

            model = sync_batchnorm(model)
        self.autocast, self.channels_last = cuda_speedups(prof, self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.optimizer = model, make_optimizer(prof, model)
        self.fast = fast_path(prof, task, self.device)
        # torch.compile'd module for the training steps only; checkpoints and evaluation use `model`
        self.step_model = torch.compile(model) if self.fast.get("compile") else model
        self.history: list[dict] = []
        self.best, self.resumed_s = float("-inf"), 0.0  # earlier attempts' training time (resumed)
        self.attempt_t0 = time.perf_counter()
        start, stopped = self._resume()
        bar = self.reporter.start(f"train {r.defense}", prof.epochs)
        self.reporter.advance(bar, start)
        for epoch in range(start, prof.epochs if not stopped else start):
            val = self._epoch(epoch)
            if val is None:  # the early-stop guard ended training
                break
            self.reporter.advance(bar, 1, **{k: f"{v:.3f}" for k, v in val.items()})
        self.reporter.stop(bar)
        if self.history and dist.is_main:
            from .analysis.plots import training_curves

            training_curves(self.history, self.run_dir / "training.png", f"{r.task} · {r.defense} · seed {r.seed}",
                            getattr(task, "headline_metric", "accuracy"))
        return Trained(self.history, self.fast, self.resumed_s)

    def _resume(self) -> tuple[int, bool]:
        """The first epoch to train and whether training had stopped early, from ``state.pt`` when it
        belongs to this config (and restores model, optimizer, components, history, best)."""
        r, prof = self.r, self.prof
        if not self.state_path.exists():
            return 0, False
        state = load_state(self.state_path, r.run_id, self.device)
        if state.get("config_hash") != r.config_hash or state["epoch"] + 1 > prof.epochs:
            return 0, False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.composite.load_state_dict(state.get("components", {}))
        start, self.best = state["epoch"] + 1, state["best"]
        self.resumed_s = float(state.get("train_s", 0.0))
        self.history = json.loads(state["history"])
        stopped = bool(state.get("stopped", False))
        self.reporter.message(f"{r.run_id}: resuming after epoch {start} of {prof.epochs}"
                              + (" (training had stopped early)" if stopped else ""))
        return start, stopped

    def _epoch(self, epoch: int) -> dict[str, float] | None:
        """Train one epoch, validate, select and save; the validation metrics, or None when the
        composition's early-stop guard ended training at this epoch."""
        r, prof, dist, composite = self.r, self.prof, self.dist, self.composite
        te = time.perf_counter()
        gen = torch.Generator().manual_seed(derive_seed(r.seed, "epoch", epoch))
        # data-parallel: the loader's generator (order, augmentation) is the same on every rank;
        # the attacks draw from a generator of the rank's own (its shard's random starts)
        agen = torch.Generator().manual_seed(derive_seed(r.seed, "epoch", epoch, "rank", dist.rank)) if dist.active else gen
        if self.fast.get("gpu_resident"):  # attack noise drawn on the GPU: no host-to-device copy per attack
            agen = torch.Generator(device=self.device).manual_seed(derive_seed(r.seed, "epoch", epoch, "rank", dist.rank, "cuda"))
        torch.manual_seed(derive_seed(r.seed, "global", epoch))
        composite.set_epoch(epoch, prof.epochs)
        train_loader, val_loader, _ = self.task.loaders(prof.batch_size, gen, prof.eval_batch_size)
        means, first = self._steps(epoch, train_loader, agen)
        row = {"epoch": epoch, "lr": lr_at(prof, epoch), **means}
        if first is not None and self._stopped_early(epoch, row, first, agen, te):
            return None
        scored = composite.eval_model(self.model)
        val = validate(r, self.task, scored, val_loader, epoch, self.device)
        row.update(**val, seconds=round(time.perf_counter() - te, 3))
        self.history.append(row)
        self._save(epoch, scored, val["val_clean"] if composite.select_on == "clean" else val["val_robust"])
        return val

    def _steps(self, epoch: int, train_loader: Any, agen: torch.Generator) -> tuple[dict[str, float], Batch | None]:
        """The optimisation steps of one epoch (each batch ``replays`` times, the lr and momentum set
        every step): the mean loss parts over ranks, and this rank's first batch (for the epoch-end hook)."""
        prof, dist, composite = self.prof, self.dist, self.composite
        replays = composite.replays
        iters = max(len(train_loader), 1) * replays
        sums: dict[str, float] = {}
        n, first, seen = 0, None, 0
        for i, batch in enumerate(train_loader):
            n_global = len(batch)
            if dist.active:  # this rank's contiguous shard of the global batch
                sl = dist.shard(n_global)
                batch = batch.rows(sl.start, sl.stop)
            seen += len(batch)
            batch = batch.to(self.device)
            if self.channels_last and batch.x.dim() == 4:
                batch.x = batch.x.contiguous(memory_format=torch.channels_last)
            if first is None:
                first = batch
            for k in range(replays):
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(prof, epoch + (i * replays + k) / iters)
                    if prof.cycle_momentum:
                        group["momentum"] = momentum_at(prof, epoch + (i * replays + k) / iters)
                out = train_step(composite, self.step_model, batch, self.task, self.optimizer, agen, self.autocast,
                                 dist, n_global)
                for key, v in {"loss": out.loss.item(), **out.parts}.items():
                    sums[key] = sums.get(key, 0.0) + v
                n += 1
        return dist.gather_sum({k: v / max(n, 1) for k, v in sums.items()}, seen), first  # over ranks, by samples

    def _stopped_early(self, epoch: int, row: dict, first: Batch, agen: torch.Generator, te: float) -> bool:
        """The composition's epoch-end hook (its values join ``row``); True when its guard stops
        training here, keeping the previous epoch's weights (Fast-AT's guard)."""
        dist = self.dist
        end_vals = dist.broadcast(self.composite.epoch_end(self.model, self.task, first, agen))  # rank 0's shard decides
        if dist.active and not _has_sync_bn(self.model):
            dist.broadcast_buffers(self.model)  # the hook may have run train-mode forwards (Fast-AT's guard)
        row.update({k: v for k, v in end_vals.items()})
        if not (end_vals.get("stop", 0.0) > 0 and self.state_path.exists()):
            return False
        row["seconds"] = round(time.perf_counter() - te, 3)
        self.history.append(row)
        self.reporter.message(f"{self.r.run_id}: stopped at epoch {epoch} by the early-stop guard; "
                              f"keeping epoch {epoch - 1}'s weights as last")
        if dist.is_main:
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
            state.update(stopped=True, history=json.dumps(self.history))
            atomic_save(state, self.state_path)
        return True

    def _save(self, epoch: int, scored: torch.nn.Module, metric: float) -> None:
        """``best.pt`` when ``metric`` beats the best so far (NaN never wins), ``last.pt`` and ``state.pt``."""
        main, run_dir = self.dist.is_main, self.run_dir
        if metric != metric:  # NaN (an empty validation set) never wins
            metric = float("-inf")
        weights = plain_state(scored)
        if metric > self.best or not (run_dir / "best.pt").exists():
            self.best = metric
            if main:
                atomic_save(weights, run_dir / "best.pt")
        if main:
            atomic_save(weights, run_dir / "last.pt")
            atomic_save({"config_hash": self.r.config_hash, "epoch": epoch, "best": self.best,
                         "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "components": self.composite.state_dict(), "history": json.dumps(self.history),
                         "train_s": self.resumed_s + time.perf_counter() - self.attempt_t0}, self.state_path)
        self.dist.barrier()  # every rank sees best.pt before the next epoch's "exists" test
