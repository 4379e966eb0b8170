"""Data-parallel training and sharded evaluation across processes (``torchrun --nproc-per-node N``).

``Dist.from_env()`` joins the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on
CPU. With one process every method is a no-op, so the runner has one code path.

**What a training step does** (the semantics of ``DistributedDataParallel``): every rank iterates the
same global batch order (the epoch's generator is seeded identically everywhere) and trains on its
contiguous shard of each global batch (:meth:`Dist.shard`): its adversarial examples are generated on
its shard only. After the backward pass the gradients are averaged over ranks, weighted by shard
size (:meth:`Dist.average_gradients`: one all-reduce of the flattened gradients), so the update is
the one of the global-batch mean loss; gradients a weight perturbation takes for its direction (AWP,
SAM) go through the same average (``grad_sync``), so every rank perturbs identically; BatchNorm
buffers are broadcast from rank 0 after every step (DDP's ``broadcast_buffers``) unless
``--sync-bn`` converts BatchNorm to :class:`torch.nn.SyncBatchNorm` (statistics of the global batch).

**Why not the ``DistributedDataParallel`` module itself**: one natbench step runs many forward and
backward passes that are not the training loss's (the attack's gradients w.r.t. the input, a weight
perturbation's extra gradient taken with ``autograd.grad``); DDP's reducer would synchronise (or
refuse) at the wrong moments. Averaging the gradients explicitly at the three points where weights
get gradients gives DDP's update without its hooks.

**Documented nondeterminism** against one process with the same global batch: without ``--sync-bn``
each rank's BatchNorm normalises with its shard's statistics (in the attack and in the loss), and
every rank draws its attacks' random starts for its own shard, so numbers differ within run-to-run
noise; with ``--sync-bn`` and a defense without random starts (``vanilla``) they agree up to
floating-point reassociation of the reductions (tests/test_distributed.py).

Evaluation shards the test set by batches (rank ``r`` evaluates batches ``r, r + N, ...``) for tasks
whose per-sample results are independent of the other samples (``EVAL_SHARDABLE``: classification);
the per-sample flags are gathered and put back in loader order on every rank. Other tasks (re-id:
mAP ranks queries against the whole gallery) are evaluated whole on every rank. Only rank 0 writes
files and the store; the others wait at barriers.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass
class Dist:
    """The process group (``world == 1``: a plain single process; every method is then a no-op)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "Dist":
        """Join the group torchrun started (``WORLD_SIZE`` > 1), else a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local)
        return cls(dist.get_world_size(), dist.get_rank(), local)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA, else ``device``."""
        return torch.device("cuda", self.local_rank) if self.active and device.type == "cuda" else device

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (decisions that read the store or the file system)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------------------------ training
    def shard(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n`` (sizes differ by at most one)."""
        if not self.active:
            return slice(0, n)
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def _weight(self, n_local: int, n_global: int) -> float:
        return n_local / max(n_global, 1)

    def average(self, grads: list[Tensor], n_local: int, n_global: int) -> list[Tensor]:
        """``sum_r (n_r / n) * g_r`` over ranks: the gradient of the global-batch mean loss when each
        rank's ``g_r`` is the gradient of its shard's mean loss. One all-reduce of the flattened
        tensors; returns new tensors (the inputs are not modified)."""
        if not self.active or not grads:
            return grads
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors([g.detach() for g in grads]).mul_(self._weight(n_local, n_global))
        dist.all_reduce(flat)
        return list(_unflatten_dense_tensors(flat, grads))

    def average_gradients(self, model: nn.Module, n_local: int, n_global: int) -> None:
        """Replace every parameter's ``.grad`` by its shard-size-weighted average over ranks (a
        parameter without a gradient on some rank counts as zero there)."""
        if not self.active:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, g in zip(params, self.average(grads, n_local, n_global)):
            p.grad = g

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if not self.active:
            return
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b.data, src=0)

    def same_parameters(self, model: nn.Module) -> bool:
        """Whether every rank holds rank 0's parameters and buffers (a check, not a sync)."""
        if not self.active:
            return True
        import torch.distributed as dist

        ok = torch.tensor([1.0])
        for t in [*model.parameters(), *model.buffers()]:
            ref = t.detach().clone()
            dist.broadcast(ref, src=0)
            if not torch.equal(ref, t.detach()):
                ok.zero_()
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    # ------------------------------------------------------------------------------ evaluation
    def shard_batches(self, loader: Iterable) -> "ShardedLoader":
        return ShardedLoader(loader, self)

    def gather_flags(self, parts: list[tuple[int, Tensor]]) -> Tensor:
        """Per-sample flags of ``(batch index, flags)`` pieces from every rank, in batch order."""
        if not self.active:
            return torch.cat([f for _, f in sorted(parts, key=lambda p: p[0])]) if parts else torch.zeros(0, dtype=torch.bool)
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, [(i, f.cpu()) for i, f in parts])
        merged = sorted((p for ps in everyone for p in ps), key=lambda p: p[0])
        return torch.cat([f for _, f in merged]) if merged else torch.zeros(0, dtype=torch.bool)

    def gather_sum(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """``sum_r weight_r * values_r / sum_r weight_r`` per key (means of per-sample metrics)."""
        if not self.active:
            return values
        import torch.distributed as dist

        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, (weight, values))
        total = sum(w for w, _ in everyone)
        keys = values.keys()
        return {k: sum(w * v[k] for w, v in everyone if w > 0) / max(total, 1e-12) for k in keys}


class ShardedLoader:
    """The batches of ``loader`` with index ``i % world == rank``, remembering their indices."""

    def __init__(self, loader: Iterable, dist: Dist):
        self.loader, self.dist = loader, dist
        self.indices: list[int] = []  # loader positions of the batches this rank saw
        self.sizes: list[int] = []  # and their sizes

    def __len__(self) -> int:
        n = len(self.loader)  # type: ignore[arg-type]
        return len(range(self.dist.rank, n, self.dist.world))

    def __iter__(self) -> Iterator[Any]:
        self.indices, self.sizes = [], []
        for i, batch in enumerate(self.loader):
            if i % self.dist.world == self.dist.rank:
                self.indices.append(i)
                self.sizes.append(len(batch))
                yield batch


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm layers as :class:`torch.nn.SyncBatchNorm` (statistics over the global batch)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
