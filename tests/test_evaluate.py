"""bf16 evaluation needs CUDA and is recorded with every result."""
from __future__ import annotations

import pytest
import torch

from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.runner import Runner

from helpers import digits_task

REG = get_registry()


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
