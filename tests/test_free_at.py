"""Free-AT (natbench.defenses.free_at): the persistent delta, its exact eps steps and the replays, against
hand computations (float64), one replay at a time as the runner does it."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from natbench.contracts import Batch
from natbench.defenses.fast_at import FastAT
from natbench.defenses.free_at import FreeAT

from helpers import TaskSlice, edge_batch, linear_ce_grad, linear_net, softmax

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_step(free, model, batch, task, opt):
    """One replay as the runner does it."""
    cache = {}
    model.train()
    free.prepare(model, batch, task, cache, torch.Generator().manual_seed(0))
    out = free.loss(model, batch, task, cache)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    free.after_step(model)
    return cache, out


def test_free_at_delta_persists_and_takes_exact_eps_steps():
    eps, lr = 0.1, 0.05
    task, model = TaskSlice(eps), linear_net(2, scale=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    free = FreeAT(FreeAT.Params(m=3))
    batches = [edge_batch(1), edge_batch(2), edge_batch(3, n=4)]  # the last is smaller
    delta = torch.zeros_like(batches[0].x)  # our own copy of the persistent delta
    n_checked = 0
    for batch in batches:
        for _ in range(free.replays):
            B = len(batch)
            w0 = [p.detach().clone() for p in model.parameters()]
            # by hand: x' = clamp(x + delta); grads of the batch-mean CE wrt delta and weights at x'
            x = batch.x.numpy()
            xin = x + delta[:B].numpy()
            inside = (xin >= 0) & (xin <= 1)
            x_adv = np.clip(xin, 0, 1)
            g_delta = linear_ce_grad(model, x_adv, batch.y.numpy()) * inside  # clamp passes no gradient outside
            W, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
            p = softmax(x_adv.reshape(B, -1) @ W.T + b)
            p[np.arange(B), batch.y.numpy()] -= 1
            gW, gb = p.T @ x_adv.reshape(B, -1) / B, p.sum(0) / B

            cache, out = _free_step(free, model, batch, task, opt)
            np.testing.assert_allclose(cache["x_adv"].detach().numpy(), x_adv, rtol=0, atol=1e-15)
            new = np.clip(delta[:B].numpy() + eps * np.sign(g_delta), -eps, eps)
            np.testing.assert_allclose(free.delta[:B].numpy(), new, rtol=0, atol=1e-15)
            assert torch.equal(free.delta[B:], delta[B:])  # the rows a small batch does not use are kept
            np.testing.assert_allclose(model[1].weight.detach().numpy(), w0[0].numpy() - lr * gW, rtol=0, atol=1e-13)
            np.testing.assert_allclose(model[1].bias.detach().numpy(), w0[1].numpy() - lr * gb, rtol=0, atol=1e-13)
            delta[:B] = torch.from_numpy(new)
            if n_checked == 0:  # delta = 0: pixels exactly on 0 and 1 still get a gradient (TF clip_by_value)
                assert torch.count_nonzero(free.delta[:, :, 0, :2]) == free.delta[:, :, 0, :2].numel()
            n_checked += 1
    assert n_checked == 9
    assert free.delta.abs().max().item() == pytest.approx(eps)  # it moved, within the ball
    assert free.delta.shape == batches[0].x.shape


def test_free_at_first_replay_is_clean_and_state_round_trips():
    task, model, batch = TaskSlice(0.1), linear_net(3), edge_batch()
    free = FreeAT(FreeAT.Params(m=2))
    cache = {}
    free.prepare(model, batch, task, cache, torch.Generator())
    assert torch.equal(cache["x_adv"].detach(), batch.x)  # delta starts at zero
    assert cache["x_adv"].requires_grad  # the runner's backward must reach delta
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    free.after_step(model)  # no backward happened: nothing changes, no error
    assert torch.count_nonzero(free.delta) == 0
    for _ in range(3):
        _free_step(free, model, batch, task, opt)
    buf = io.BytesIO()
    torch.save({"free-at": free.state_dict(), "fast-at": FastAT().state_dict()}, buf)  # as the runner's state.pt
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["free-at"]
    other = FreeAT(FreeAT.Params(m=2))
    other.load_state_dict(state)
    assert torch.equal(other.delta, free.delta) and other.delta is not free.delta
    _free_step(free, model, batch, task, opt)
    assert not torch.equal(state["delta"], free.delta)  # the saved state is a copy
    c1, c2 = {}, {}
    other.load_state_dict(free.state_dict())
    free.prepare(model, batch, task, c1, torch.Generator())
    other.prepare(model, batch, task, c2, torch.Generator())
    assert torch.equal(c1["x_adv"], c2["x_adv"])
    # a different per-example shape starts again at zero; a larger batch extends with zeros
    img = Batch(torch.rand(6, 1, 5, 5, dtype=torch.float64), batch.y)
    free._delta_for(img.x)
    assert free.delta.shape == img.x.shape and torch.count_nonzero(free.delta) == 0
    other.load_state_dict({"delta": torch.ones(2, 1, 4, 4, dtype=torch.float64) * 0.05})
    c3 = {}
    other.prepare(model, batch, task, c3, torch.Generator())
    assert other.delta.shape[0] == 6 and torch.count_nonzero(other.delta[2:]) == 0
