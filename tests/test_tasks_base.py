"""The evaluation loop every task kind shares (natbench.tasks._base.TaskBase): batches that run out of memory
are split without changing the results, and the size that fitted is kept."""
from __future__ import annotations

import torch

from helpers import digits_task


def test_out_of_memory_batches_are_split_and_results_unchanged(monkeypatch):
    from natbench.attacks.fgsm import FGSM

    _, task = digits_task()
    torch.manual_seed(0)
    model = task.build_model().eval()
    _, _, test = task.loaders(120, torch.Generator().manual_seed(0), 120)
    full = task.evaluate(model, test, FGSM())
    real = FGSM.__call__

    def picky(self, objective, x, **kw):
        if len(x) > 50:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, objective, x, **kw)

    monkeypatch.setattr(FGSM, "__call__", picky)
    split = task.evaluate(model, test, FGSM())
    assert torch.equal(split.correct, full.correct) and split.metrics == full.metrics
    assert task.max_eval_batch == 30  # 120 -> 60 -> 30, then kept for later batches
