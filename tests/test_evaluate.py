"""The evaluation plumbing: a task's evaluation loop splits batches that run out of memory without changing
the results; bf16 evaluation needs CUDA and is recorded with every result."""
from __future__ import annotations

import pytest
import torch

from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.runner import Runner

from helpers import digits_task

REG = get_registry()


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


def test_bf16_evaluation_needs_cuda(tmp_path):
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Runner(tmp_path, registry=REG, eval_bf16=True)


@pytest.mark.gpu
def test_bf16_evaluation_is_recorded_with_every_result(tmp_path):
    r, task = digits_task("vanilla", profile="quick", sets=["training.epochs=1"], suite="smoke")
    runner = Runner(tmp_path, device=torch.device("cuda"), registry=REG, eval_bf16=True)
    run_id = runner.run(r)
    res = runner.store.results("digits")
    res = res[res.run_id == run_id]
    assert set(res[res.metric == "bf16_autocast"].attack) == {"clean", "fgsm", "pgd-5"}
