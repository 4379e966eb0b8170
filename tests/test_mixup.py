"""The mixup regularizer (natbench.regularizers.mixup) against its hand formula (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natbench.contracts import Batch
from natbench.regularizers.mixup import Mixup

from helpers import TaskSlice, edge_batch, linear_net, softmax

pytestmark = pytest.mark.usefixtures("one_thread")


def _mixup_hand(model, x, y, perm, r):
    W, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    xm = r * x + (1 - r) * x[perm]
    logp = np.log(softmax(xm.reshape(len(x), -1) @ W.T + b))
    n = np.arange(len(y))
    return r * -logp[n, y].mean() + (1 - r) * -logp[n, y[perm]].mean()


@pytest.mark.parametrize("with_adv", [False, True], ids=["clean", "adv"])
def test_mixup_equals_hand_formula_with_a_fixed_permutation(monkeypatch, with_adv):
    model, batch = linear_net(6, scale=3.0), edge_batch(n=6)
    x_adv = (batch.x + 0.1 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).clamp(0, 1)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    reg = Mixup(Mixup.Params(weight=0.5, ratio=0.7))
    monkeypatch.setattr(reg, "permutation", lambda b: perm)
    cache = {"x_adv": x_adv} if with_adv else {}
    out = reg.loss(model, batch, TaskSlice(), cache)
    used = (x_adv if with_adv else batch.x).numpy()
    expected = _mixup_hand(model, used, batch.y.numpy(), perm.numpy(), 0.7)
    assert out.loss.item() == pytest.approx(0.5 * expected, rel=1e-12)
    which = "adv" if with_adv else "clean"
    assert out.parts == {f"mixup_ce_{which}": pytest.approx(expected, rel=1e-12)}
    other = (batch.x if with_adv else x_adv).numpy()
    assert abs(_mixup_hand(model, other, batch.y.numpy(), perm.numpy(), 0.7) - expected) > 1e-6
    assert abs(_mixup_hand(model, used, batch.y.numpy(), perm.numpy(), 0.5) - expected) > 1e-6
    out.loss.backward()
    assert model[1].weight.grad.abs().sum() > 0


def test_mixup_permutation_from_global_rng_once_per_batch():
    model, batch, task = linear_net(6), edge_batch(n=6), TaskSlice()
    reg = Mixup()
    torch.manual_seed(123)
    expected_perm = torch.randperm(6)
    torch.manual_seed(123)
    out = reg.loss(model, batch, task, {})
    assert out.loss.item() == pytest.approx(_mixup_hand(model, batch.x.numpy(), batch.y.numpy(), expected_perm.numpy(), 0.7), rel=1e-12)
    assert torch.equal(reg.permutation(batch), expected_perm)  # same batch object: same pairs
    assert reg.loss(model, batch, task, {}).loss.item() == out.loss.item()
    torch.manual_seed(123)
    assert torch.equal(Mixup().permutation(batch), expected_perm)  # deterministic given the seed
    other = Batch(batch.x.clone(), batch.y.clone())
    perms = {tuple(reg.permutation(Batch(batch.x, batch.y)).tolist()) for _ in range(5)}
    assert len(perms) > 1  # a new batch object draws a new permutation
    assert Mixup(Mixup.Params(weight=0.0)).loss(model, other, task, {}).loss.item() == 0.0


def test_mixup_ratio_one_is_plain_ce():
    model, batch = linear_net(7), edge_batch()
    out = Mixup(Mixup.Params(ratio=1.0)).loss(model, batch, TaskSlice(), {})
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(batch.x), batch.y).item(), rel=1e-12)
