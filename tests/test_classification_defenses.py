"""Every defense the registry offers trains a few steps on digits and on the CIFAR-10 fixture.

The compositions are derived from the registry (every base alone, every regularizer, perturbation
and averager on the default base, plus the paper's compositions), so a newly registered component is
exercised without editing this file. Dependencies (NAT's adversary) are bound to untrained models of
the task's architecture: this checks the training code paths, not the adversary's training.
"""
from __future__ import annotations

import math

import pytest
import torch

from natbench.registry import get_registry
from natbench.runner import make_optimizer

from helpers import train_steps, training_setup

REG = get_registry()
COMPOSED = ["trades+nat", "mart+nat", "pgd-at+nat+awp", "trades+nat+awp", "trades+awp", "nuat+ema",
            "nuat2+ema", "vanilla+sam", "vanilla+nat", "fast-at+nat", "free-at+nat"]


def _classification(kind: str, name: str) -> bool:
    tasks = REG.entry(kind, name).tasks
    return not tasks or "classification" in tasks


def _specs() -> list[str]:
    """Every classification component (re-id-only ones, ``amd``, are trained in test_reid_defenses.py)."""
    out = [n for n in REG.names("defenses") if _classification("defenses", n)]
    out += [f"pgd-at+{n}" for n in REG.names("regularizers")]
    out += [f"pgd-at+{n}" for n in REG.names("perturbations")]
    out += [f"pgd-at+{n}" for n in REG.names("averagers")]
    return sorted(set(out)) + [c for c in COMPOSED if c not in out]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    from natbench.data.cifar import write_cifar10_fixture

    root = tmp_path_factory.mktemp("cifar")
    write_cifar10_fixture(root, n_train_per_batch=10, n_test=10)
    return root


FAST = ["threat_model.train_steps=2"]
TASKS = {
    "digits": FAST,
    "cifar10": [*FAST, "model.arch=small_cnn", "model.width=8", "data.val_fraction=0.1"],
}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("defense", _specs())
def test_trains_a_few_steps(task, defense, cifar_root):
    extra = ["free-at.m=2"] if defense.startswith("free-at") else []  # 2 replays are enough to exercise them
    r, spec_task, composite, model = training_setup(task, defense, cifar_root if task == "cifar10" else None,
                                                    *TASKS[task], "training.batch_size=16", *extra)
    opt = make_optimizer(r.profile, model)
    gen = torch.Generator().manual_seed(0)
    composite.set_epoch(0, r.profile.epochs)
    train, _, _ = spec_task.loaders(16, gen)
    before = [p.detach().clone() for p in model.parameters()]
    steps = 0
    for batch, out in train_steps(composite, model, train, spec_task, opt, gen, n=2):
        assert math.isfinite(out.loss.item()), (defense, out.parts)
        assert out.parts, f"{defense}: no loss parts logged"
        assert all(math.isfinite(v) for v in out.parts.values()), (defense, out.parts)
        steps += 1
    assert steps >= 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), f"{defense}: no parameter moved"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert composite.epoch_end(model, spec_task, batch, gen) is not None
    evaluated = composite.eval_model(model)
    assert set(evaluated.state_dict()) == set(model.state_dict())
