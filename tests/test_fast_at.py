"""Fast-AT (natbench.defenses.fast_at): the FGSM-RS step and the early-stop guard against hand computations
(float64) and reference loops. The class is used directly (not through the registry)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natbench.contracts import Batch
from natbench.defenses.fast_at import FastAT

from helpers import TaskSlice, bn_net, edge_batch, linear_ce_grad, linear_net, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("alpha", [None, 0.05])
def test_fgsm_rs_one_step_by_hand(alpha):
    model, batch, task = linear_net(0, scale=3.0), edge_batch(), TaskSlice(eps=0.3)
    eps = 0.3
    step = 1.25 * eps if alpha is None else alpha
    cache = {}
    FastAT(FastAT.Params(alpha=alpha)).prepare(model, batch, task, cache, torch.Generator().manual_seed(7))
    x = batch.x.numpy()
    noise = torch.empty(batch.x.shape, dtype=torch.float64).uniform_(-eps, eps, generator=torch.Generator().manual_seed(7)).numpy()
    d0 = np.clip(noise, -x, 1 - x)  # random start inside the ball and the image range
    g = linear_ce_grad(model, x + d0, batch.y.numpy())
    assert np.count_nonzero(g) == g.size
    moved = d0 + step * np.sign(g)
    d1 = np.clip(np.clip(moved, -eps, eps), -x, 1 - x)
    x_adv = cache["x_adv"].numpy()
    np.testing.assert_allclose(x_adv, x + d1, rtol=0, atol=1e-15)
    assert np.abs(x_adv - x).max() <= eps + 1e-15 and x_adv.min() >= 0 and x_adv.max() <= 1
    # where no clip bites, the step is exactly alpha * sign(grad) from the random start
    free = (np.abs(moved) <= eps) & (x + moved >= 0) & (x + moved <= 1)
    assert free.sum() > 10 and (~free).sum() > 10  # both cases occur
    np.testing.assert_allclose((x_adv - x - d0)[free], (step * np.sign(g))[free], rtol=0, atol=1e-12)
    assert not cache["x_adv"].requires_grad
    assert all(p.grad is None for p in model.parameters())  # input gradients only


def test_fgsm_rs_alpha_default_and_loss():
    model, batch, task = linear_net(1), edge_batch(), TaskSlice(eps=0.2)
    a, b = {}, {}
    FastAT().prepare(model, batch, task, a, torch.Generator().manual_seed(1))
    FastAT(FastAT.Params(alpha=0.25)).prepare(model, batch, task, b, torch.Generator().manual_seed(1))
    assert torch.equal(a["x_adv"], b["x_adv"])  # None -> 1.25 * eps
    out = FastAT().loss(model, batch, task, a)
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(a["x_adv"]), batch.y).item(), rel=1e-14)
    assert set(out.parts) == {"ce_adv"} and "logits_adv" in a


def test_fgsm_rs_bn_mode():
    batch, task = edge_batch(), TaskSlice()
    model = bn_net(0).train()
    bn = model[2]
    before = bn.running_mean.clone()
    FastAT().prepare(model, batch, task, {}, torch.Generator().manual_seed(0))
    assert not torch.equal(bn.running_mean, before)  # train mode: the reference never switches
    assert model.training
    model.eval()
    after_train = bn.running_mean.clone()
    FastAT(FastAT.Params(attack_bn="eval")).prepare(model, batch, task, {}, torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, after_train) and not model.training


def _onehot_data():
    """Sample i lights pixel i (class i % 5); a model reading pixel c into class c is robust at small eps."""
    x = torch.zeros(6, 1, 4, 4, dtype=torch.float64)
    for i in range(6):
        x.view(6, -1)[i, i] = 1.0
    x.view(6, -1)[5, 5] = 0.0
    x.view(6, -1)[5, 0] = 1.0  # sample 5: class 0, pixel 0
    return Batch(x, torch.tensor([0, 1, 2, 3, 4, 0]))


def _reader(shift: int) -> nn.Module:
    """Flatten->Linear with class c reading pixel (c + shift) % 5 with weight 10."""
    m = linear_net(0)
    with torch.no_grad():
        m[1].weight.zero_()
        m[1].bias.zero_()
        for c in range(5):
            m[1].weight[c, (c + shift) % 5] = 10.0
    return m


def test_guard_stops_on_a_drop_of_more_than_guard_drop_and_state_round_trips():
    task, batch, gen = TaskSlice(eps=0.05), _onehot_data(), torch.Generator().manual_seed(0)
    good, bad = _reader(0), _reader(1)  # bad: every sample misclassified
    fa = FastAT()
    assert fa.epoch_end(good, task, batch, gen) == {"guard_robust": 1.0, "stop": 0.0}
    assert fa.state_dict() == {"prev_robust": 1.0}
    assert fa.epoch_end(bad, task, batch, gen) == {"guard_robust": 0.0, "stop": 1.0}
    assert fa.state_dict() == {"prev_robust": 1.0}  # a rejected epoch does not become the reference

    resumed = FastAT()
    assert resumed.epoch_end(bad, task, batch, gen)["stop"] == 0.0  # fresh: reference 0 (as the code), never stops
    resumed.load_state_dict(fa.state_dict())
    assert resumed.epoch_end(bad, task, batch, gen)["stop"] == 1.0  # resumed: remembers 1.0

    # the threshold: 1 of 6 wrong (drop 1/6 < 0.2) continues, 2 of 6 wrong (drop 1/3) stops
    one_wrong = Batch(batch.x, torch.tensor([0, 1, 2, 3, 4, 1]))
    two_wrong = Batch(batch.x, torch.tensor([0, 1, 2, 3, 0, 1]))
    for labels, acc, stop in ((one_wrong, 5 / 6, 0.0), (two_wrong, 4 / 6, 1.0)):
        g = FastAT()
        g.load_state_dict({"prev_robust": 1.0})
        out = g.epoch_end(good, task, labels, gen)
        assert out["guard_robust"] == pytest.approx(acc) and out["stop"] == stop
    loose = FastAT(FastAT.Params(guard_drop=0.5))
    loose.load_state_dict({"prev_robust": 1.0})
    assert loose.epoch_end(good, task, two_wrong, gen)["stop"] == 0.0
    assert FastAT(FastAT.Params(early_stop=False)).epoch_end(bad, task, batch, gen) == {}


def _reference_guard(model, x, y, eps, alpha, steps, gen, freeze=True):
    """``utils.attack_pgd`` (1 restart) + the accuracy of ``train_fgsm.py``'s early-stop block, in [0,1] units.
    ``freeze=False``: every example keeps moving (plain PGD), to show the test can tell."""
    delta = torch.empty(x.shape, dtype=x.dtype).uniform_(-eps, eps, generator=gen)
    delta = torch.max(torch.min(delta, 1 - x), -x)
    for _ in range(steps):
        d = delta.clone().requires_grad_(True)
        out = model(x + d)
        index = torch.where(out.max(1)[1] == y)[0] if freeze else torch.arange(len(y))
        if len(index) == 0:
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y), d)
        new = torch.clamp(delta[index] + alpha * grad[index].sign(), -eps, eps)
        delta[index] = torch.max(torch.min(new, 1 - x[index]), -x[index])
    with torch.no_grad():
        return (model((x + delta).clamp(0, 1)).max(1)[1] == y).sum().item() / y.size(0)


@pytest.mark.parametrize("kind,eps", [("linear-eval", 0.2), ("bn-train", 0.1)])
def test_guard_pgd_matches_reference_loop(kind, eps):
    batch = edge_batch(seed=11, n=40)
    model = linear_net(4, scale=4.0).eval() if kind == "linear-eval" else bn_net(4).train()
    with torch.no_grad():  # labels = clean predictions, except a few, so the attack has work to do
        batch.y = model(batch.x).argmax(1)
    batch.y[:3] = (batch.y[:3] + 1) % 5
    clean = (model(batch.x).argmax(1) == batch.y).sum().item() / 40
    accs = []
    for steps, step in ((5, None), (5, 0.01), (1, None)):
        fa = FastAT(FastAT.Params(guard_steps=steps, guard_step_size=step))
        # guard_bn "train" keeps the caller's train mode for bn-train and switches linear-eval to train (no BN there)
        acc = fa.guard_accuracy(model, TaskSlice(eps), batch, torch.Generator().manual_seed(5))
        ref = _reference_guard(copy.deepcopy(model), batch.x, batch.y, eps, eps / 4 if step is None else step, steps,
                               torch.Generator().manual_seed(5))
        assert acc == ref
        accs.append(acc)
    assert 0 < accs[0] < clean - 0.2  # the guard attacks
    if kind == "bn-train":  # in train mode the frozen examples change the batch statistics: it matters
        plain = _reference_guard(copy.deepcopy(model), batch.x, batch.y, eps, eps / 4, 5, torch.Generator().manual_seed(5), freeze=False)
        assert plain != accs[0]


def test_guard_bn_mode():
    batch, task = edge_batch(), TaskSlice(eps=1e-4)  # tiny eps: every example stays correct, all 5 steps run
    model = bn_net(1).train()
    bn = model[2]
    with torch.no_grad():
        batch.y = copy.deepcopy(model)(batch.x).argmax(1)
    before = snapshot(model)
    FastAT(FastAT.Params(guard_bn="eval")).epoch_end(model, task, batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and model.training
    FastAT().epoch_end(model, task, batch, torch.Generator().manual_seed(0))  # reference: train mode
    assert model.training and not torch.equal(bn.running_mean, before["2.running_mean"])
    assert int(bn.num_batches_tracked) == int(before["2.num_batches_tracked"]) + 7  # 5 steps + 2 forwards
    assert all(p.grad is None for p in model.parameters())
