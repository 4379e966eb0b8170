"""The EMA weight averager (natbench.averagers.ema) against its hand formula (float64) for parameters and
buffers, the averaged model and resumption."""
from __future__ import annotations

import io

import pytest
import torch

from natbench.averagers.ema import EMA

from helpers import bn_net64, ema_by_hand, sgd_steps, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ema_update_equals_hand_formula_for_parameters_and_buffers():
    decay = 0.9
    model = bn_net64().train()
    w0 = snapshot(model)
    avg = EMA(EMA.Params(decay=decay))
    states = sgd_steps(model, 3, after=[avg.update])  # each step's forward also moves the BN buffers
    ema = avg.state_dict()["ema"]
    s1, s2, s3 = states
    assert set(ema) == set(w0)
    for k in ema:
        if ema[k].is_floating_point() and s1[k].is_floating_point():
            closed = (1 - decay) * s3[k] + decay * (1 - decay) * s2[k] + decay ** 2 * s1[k]
            assert torch.allclose(ema[k], closed, rtol=1e-12, atol=1e-14), k
    for k, v in ema_by_hand(states, decay).items():
        assert torch.equal(ema[k], v), k
    # it starts from the first post-step weights, not from the initial ones
    one = EMA(EMA.Params(decay=decay))
    m1 = bn_net64().train()
    (t1,) = sgd_steps(m1, 1, after=[one.update])
    assert torch.allclose(one.state_dict()["ema"]["1.weight"], t1["1.weight"], rtol=1e-15, atol=1e-15)
    assert not torch.allclose(one.state_dict()["ema"]["1.weight"], w0["1.weight"])
    # BN running statistics are averaged too, and num_batches_tracked as a float (1, 2, 3 -> 1.29)
    rm = "2.running_mean"
    assert not torch.equal(s1[rm], s3[rm])
    assert torch.allclose(ema[rm], (1 - decay) * s3[rm] + decay * (1 - decay) * s2[rm] + decay ** 2 * s1[rm], rtol=1e-12)
    nbt = ema["2.num_batches_tracked"]
    assert nbt.is_floating_point() and nbt.item() == pytest.approx(0.1 * 3 + 0.09 * 2 + 0.81 * 1, rel=1e-6)
    assert avg.updates == 3


def test_ema_averaged_model_and_resume():
    decay = 0.9
    model = bn_net64().train()
    avg = EMA(EMA.Params(decay=decay))
    first = avg.averaged(model)  # before any update: the model itself (a copy)
    assert first is not model and all(torch.equal(first.state_dict()[k], v) for k, v in model.state_dict().items())
    states = sgd_steps(model, 3, after=[avg.update])
    av = avg.averaged(model)
    assert av is first  # one copy, refreshed at every call
    assert av.training == model.training
    ema = ema_by_hand(states, decay)
    for k, v in av.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, ema[k]), k
    assert av.state_dict()["2.num_batches_tracked"].dtype == torch.long
    assert av.state_dict()["2.num_batches_tracked"].item() == 1  # trunc(1.29), as load_state_dict would
    assert not torch.equal(av[1].weight, model[1].weight)
    assert all(p.grad is None for p in av.parameters())
    model.eval()
    assert not avg.averaged(model).training
    model.train()
    # resume: the loaded averager continues the same average
    buf = io.BytesIO()
    torch.save(avg.state_dict(), buf)
    buf.seek(0)
    back = EMA(EMA.Params(decay=decay))
    back.load_state_dict(torch.load(buf, weights_only=True))
    assert back.updates == 3
    sgd_steps(model, 1, seed=30, after=[avg.update, back.update])
    for k, v in avg.state_dict()["ema"].items():
        assert torch.equal(back.state_dict()["ema"][k], v), k
