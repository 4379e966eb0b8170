"""Fast-AT (FGSM-RS + early-stop guard), Free-AT (persistent delta, replays), SAM (weight perturbation)
and the mixup term against hand computations (float64), then a few runner-style optimisation steps of
each on a digits-shaped model (1x8x8 inputs, 10 classes).

The classes are used directly (not through the registry), emulating the runner loop:
``out = composite.step_loss(...); zero_grad; backward; step; composite.restore(); after_step hooks``.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natbench.compose import Composite
from natbench.contracts import Batch, Defense, Regularizer, ThreatModel, WeightPerturbation
from natbench.defenses.fast_at import FastAT
from natbench.defenses.free_at import FreeAT
from natbench.defenses.pgd_at import PGDAT
from natbench.defenses.vanilla import Vanilla
from natbench.errors import ConfigError
from natbench.perturbations.sam import SAM
from natbench.regularizers.mixup import Mixup


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threading costs more than it saves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Task:
    """The slice of a classification task the components use."""

    def __init__(self, eps: float = 0.3):
        self.threat = ThreatModel(eps=eps, train_steps=3, train_step_size=eps / 4)

    def logits(self, model, batch, x):
        return model(x)

    def objective(self, model, batch, kind):
        assert kind == "ce"
        return lambda z: F.cross_entropy(model(z), batch.y, reduction="none")


def _linear(seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).double()
    with torch.no_grad():
        m[1].weight.mul_(scale)
    return m


def _bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5)).double()


def _batch(seed: int = 3, n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)
    x[:, :, 0, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # pixels on the image boundary
    x[:, :, 1, :2] = torch.tensor([0.05, 0.97], dtype=torch.float64)  # pixels near it
    y = torch.arange(n) % 5
    return Batch(x, y)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _linear_ce_grad(model, x, y):
    """Gradient of the batch-mean CE of a Flatten->Linear model w.r.t. its input, by hand (numpy)."""
    W, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    xf = x.reshape(len(x), -1)
    p = _softmax(xf @ W.T + b)
    p[np.arange(len(y)), y] -= 1.0
    return (p @ W / len(y)).reshape(x.shape)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_contracts_and_defaults():
    for cls in (FastAT, FreeAT):
        assert isinstance(cls(), Defense)
        assert cls.ce_on == frozenset({"adv"}) and cls.select_on == "robust"
        assert {"x_adv", "logits_adv"} <= cls.provides
    assert isinstance(Mixup(), Regularizer) and isinstance(SAM(), WeightPerturbation)
    assert Mixup.needs_cache == frozenset() and Mixup.dependencies == ()
    for cls in (FastAT, FreeAT, SAM, Mixup):
        assert cls.Params.__dataclass_params__.frozen
        assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(cls.Params))
    assert (FastAT.name, FreeAT.name, SAM.name, Mixup.name) == ("fast-at", "free-at", "sam", "mixup")
    p = FastAT.Params()
    assert p.alpha is None and p.attack_bn == "train" and p.guard_steps == 5 and p.guard_drop == 0.2 and p.early_stop
    assert FreeAT().replays == 8 and FreeAT(FreeAT.Params(m=3)).replays == 3
    assert SAM.Params().rho == 0.05 and not SAM.Params().adaptive
    assert Mixup.Params().ratio == 0.7 and Mixup.Params().weight == 1.0
    for bad in (lambda: FastAT(FastAT.Params(alpha=-1.0)), lambda: FreeAT(FreeAT.Params(m=0)),
                lambda: SAM(SAM.Params(rho=-0.1)), lambda: Mixup(Mixup.Params(ratio=1.5))):
        with pytest.raises(ConfigError):
            bad()


# --------------------------------------------------------------------------------------- Fast-AT
@pytest.mark.parametrize("alpha", [None, 0.05])
def test_fgsm_rs_one_step_by_hand(alpha):
    model, batch, task = _linear(0, scale=3.0), _batch(), _Task(eps=0.3)
    eps = 0.3
    step = 1.25 * eps if alpha is None else alpha
    cache = {}
    FastAT(FastAT.Params(alpha=alpha)).prepare(model, batch, task, cache, torch.Generator().manual_seed(7))
    x = batch.x.numpy()
    noise = torch.empty(batch.x.shape, dtype=torch.float64).uniform_(-eps, eps, generator=torch.Generator().manual_seed(7)).numpy()
    d0 = np.clip(noise, -x, 1 - x)  # random start inside the ball and the image range
    g = _linear_ce_grad(model, x + d0, batch.y.numpy())
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
    model, batch, task = _linear(1), _batch(), _Task(eps=0.2)
    a, b = {}, {}
    FastAT().prepare(model, batch, task, a, torch.Generator().manual_seed(1))
    FastAT(FastAT.Params(alpha=0.25)).prepare(model, batch, task, b, torch.Generator().manual_seed(1))
    assert torch.equal(a["x_adv"], b["x_adv"])  # None -> 1.25 * eps
    out = FastAT().loss(model, batch, task, a)
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(a["x_adv"]), batch.y).item(), rel=1e-14)
    assert set(out.parts) == {"ce_adv"} and "logits_adv" in a


def test_fgsm_rs_bn_mode():
    batch, task = _batch(), _Task()
    model = _bn_net(0).train()
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
    m = _linear(0)
    with torch.no_grad():
        m[1].weight.zero_()
        m[1].bias.zero_()
        for c in range(5):
            m[1].weight[c, (c + shift) % 5] = 10.0
    return m


def test_guard_stops_on_a_drop_of_more_than_guard_drop_and_state_round_trips():
    task, batch, gen = _Task(eps=0.05), _onehot_data(), torch.Generator().manual_seed(0)
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
    batch = _batch(seed=11, n=40)
    model = _linear(4, scale=4.0).eval() if kind == "linear-eval" else _bn_net(4).train()
    with torch.no_grad():  # labels = clean predictions, except a few, so the attack has work to do
        batch.y = model(batch.x).argmax(1)
    batch.y[:3] = (batch.y[:3] + 1) % 5
    clean = (model(batch.x).argmax(1) == batch.y).sum().item() / 40
    accs = []
    for steps, step in ((5, None), (5, 0.01), (1, None)):
        fa = FastAT(FastAT.Params(guard_steps=steps, guard_step_size=step))
        # guard_bn "train" keeps the caller's train mode for bn-train and switches linear-eval to train (no BN there)
        acc = fa.guard_accuracy(model, _Task(eps), batch, torch.Generator().manual_seed(5))
        ref = _reference_guard(copy.deepcopy(model), batch.x, batch.y, eps, eps / 4 if step is None else step, steps,
                               torch.Generator().manual_seed(5))
        assert acc == ref
        accs.append(acc)
    assert 0 < accs[0] < clean - 0.2  # the guard attacks
    if kind == "bn-train":  # in train mode the frozen examples change the batch statistics: it matters
        plain = _reference_guard(copy.deepcopy(model), batch.x, batch.y, eps, eps / 4, 5, torch.Generator().manual_seed(5), freeze=False)
        assert plain != accs[0]


def test_guard_bn_mode():
    batch, task = _batch(), _Task(eps=1e-4)  # tiny eps: every example stays correct, all 5 steps run
    model = _bn_net(1).train()
    bn = model[2]
    with torch.no_grad():
        batch.y = copy.deepcopy(model)(batch.x).argmax(1)
    before = _state(model)
    FastAT(FastAT.Params(guard_bn="eval")).epoch_end(model, task, batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and model.training
    FastAT().epoch_end(model, task, batch, torch.Generator().manual_seed(0))  # reference: train mode
    assert model.training and not torch.equal(bn.running_mean, before["2.running_mean"])
    assert int(bn.num_batches_tracked) == int(before["2.num_batches_tracked"]) + 7  # 5 steps + 2 forwards
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------- Free-AT
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
    task, model = _Task(eps), _linear(2, scale=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    free = FreeAT(FreeAT.Params(m=3))
    batches = [_batch(1), _batch(2), _batch(3, n=4)]  # the last is smaller
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
            g_delta = _linear_ce_grad(model, x_adv, batch.y.numpy()) * inside  # clamp passes no gradient outside
            W, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
            p = _softmax(x_adv.reshape(B, -1) @ W.T + b)
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
    task, model, batch = _Task(0.1), _linear(3), _batch()
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


# -------------------------------------------------------------------------------------------- SAM
def _loss_fn(batch):
    return lambda m: F.cross_entropy(m(batch.x), batch.y)


def _grads(model, loss_fn):
    twin = copy.deepcopy(model).train()
    gs = torch.autograd.grad(loss_fn(twin), list(twin.parameters()))
    return [g.detach() for g in gs], twin


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_perturbation_by_hand(adaptive):
    model, batch = _bn_net(0).train(), _batch(n=8)
    rho = 0.05
    sentinel = {n: torch.full_like(p, 3.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    w0 = [p.detach().clone() for p in model.parameters()]
    g, twin = _grads(model, _loss_fn(batch))
    if adaptive:
        norm = math.sqrt(sum(float(((w.abs() * gi) ** 2).sum()) for w, gi in zip(w0, g)))
        expected = [rho * w ** 2 * gi / (norm + 1e-12) for w, gi in zip(w0, g)]
    else:
        norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
        expected = [rho * gi / (norm + 1e-12) for gi in g]
    restore = SAM(SAM.Params(rho=rho, adaptive=adaptive)).apply(model, _loss_fn(batch))
    moved = [p.detach() - w for p, w in zip(model.parameters(), w0)]
    for m, e in zip(moved, expected):
        assert torch.allclose(m, e, rtol=1e-9, atol=1e-16)
    total = math.sqrt(sum(float((m ** 2).sum()) for m in moved))
    if adaptive:
        assert total != pytest.approx(rho, rel=1e-3)  # the adaptive e is not on the rho-sphere
        scaled = math.sqrt(sum(float(((m[w != 0] / w[w != 0].abs()) ** 2).sum()) for m, w in zip(moved, w0)))  # e = 0 where w = 0
        assert scaled == pytest.approx(rho, rel=1e-9)  # ||e / |w| || = rho
    else:
        assert total == pytest.approx(rho, rel=1e-9)  # global L2 norm of the perturbation
    for n, p in model.named_parameters():  # no .grad written
        assert torch.equal(p.grad, sentinel[n])
    # the first pass (at w) moved the BN running statistics exactly as one train-mode forward does
    assert torch.equal(model[2].running_mean, twin[2].running_mean)
    restore()


def test_sam_restore_is_bit_exact_and_bn_frozen_on_the_perturbed_pass():
    model, batch = _bn_net(1).train(), _batch(n=8)
    w0 = [p.detach().clone() for p in model.parameters()]
    loss_fn = _loss_fn(batch)
    g_at_w, twin = _grads(model, loss_fn)
    loss_at_w = loss_fn(copy.deepcopy(model)).item()
    restore = SAM(SAM.Params(rho=0.1)).apply(model, loss_fn)
    after_first = _state(model)
    perturbed = loss_fn(model)  # the outer pass, at w + e (moves BN stats in train mode)
    assert perturbed.item() > loss_at_w  # ascent
    g_at_pert = torch.autograd.grad(perturbed, list(model.parameters()))
    assert max((a - b).abs().max().item() for a, b in zip(g_at_pert, g_at_w)) > 1e-4  # a different gradient
    assert not torch.equal(model[2].running_mean, after_first["2.running_mean"])
    restore()
    for p, w in zip(model.parameters(), w0):
        assert torch.equal(p.detach(), w)  # bit-exact, no optimizer step in between
    for name in ("2.running_mean", "2.running_var", "2.num_batches_tracked"):
        assert torch.equal(model.state_dict()[name], after_first[name])  # only the pass at w counted
        assert torch.equal(model.state_dict()[name], twin.state_dict()[name])
    restore()  # a second call is a no-op
    assert all(torch.equal(p.detach(), w) for p, w in zip(model.parameters(), w0))

    unfrozen = _bn_net(1).train()
    r = SAM(SAM.Params(rho=0.1, freeze_bn=False)).apply(unfrozen, loss_fn)
    loss_fn(unfrozen)
    r()
    assert int(unfrozen[2].num_batches_tracked) == 2  # both passes counted (davda54's plain usage)


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_sam_optimizer_step_uses_the_gradient_at_the_perturbed_point(wd):
    model, batch, lr, rho = _linear(5), _batch(n=8), 0.1, 0.05
    loss_fn = _loss_fn(batch)
    w0 = [p.detach().clone() for p in model.parameters()]
    g, _ = _grads(model, loss_fn)
    norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
    e = [rho * gi / (norm + 1e-12) for gi in g]
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p, ei in zip(twin.parameters(), e):
            p.add_(ei)
    g_pert = torch.autograd.grad(loss_fn(twin), list(twin.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    restore = SAM(SAM.Params(rho=rho)).apply(model, loss_fn)
    opt.zero_grad()
    loss_fn(model).backward()
    opt.step()
    restore()
    for p, w, gp, ei in zip(model.parameters(), w0, g_pert, e):
        # w0 - lr * (grad L(w + e) + wd * (w + e)): the decay is applied at w + e (documented deviation)
        assert torch.allclose(p.detach(), w - lr * (gp + wd * (w + ei)), rtol=0, atol=1e-13)


def test_sam_rho_zero_is_off():
    model = _linear(0)
    before = _state(model)

    def must_not_run(m):
        raise AssertionError("no gradient pass with rho = 0")

    SAM(SAM.Params(rho=0.0)).apply(model, must_not_run)()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------ mixup
def _mixup_hand(model, x, y, perm, r):
    W, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    xm = r * x + (1 - r) * x[perm]
    logp = np.log(_softmax(xm.reshape(len(x), -1) @ W.T + b))
    n = np.arange(len(y))
    return r * -logp[n, y].mean() + (1 - r) * -logp[n, y[perm]].mean()


@pytest.mark.parametrize("with_adv", [False, True], ids=["clean", "adv"])
def test_mixup_equals_hand_formula_with_a_fixed_permutation(monkeypatch, with_adv):
    model, batch = _linear(6, scale=3.0), _batch(n=6)
    x_adv = (batch.x + 0.1 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).clamp(0, 1)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    reg = Mixup(Mixup.Params(weight=0.5, ratio=0.7))
    monkeypatch.setattr(reg, "permutation", lambda b: perm)
    cache = {"x_adv": x_adv} if with_adv else {}
    out = reg.loss(model, batch, _Task(), cache)
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
    model, batch, task = _linear(6), _batch(n=6), _Task()
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
    model, batch = _linear(7), _batch()
    out = Mixup(Mixup.Params(ratio=1.0)).loss(model, batch, _Task(), {})
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(batch.x), batch.y).item(), rel=1e-12)


# ------------------------------------------------------------------------------- runner-style loop
def _digits_model(seed: int = 0) -> nn.Module:
    from natbench.models import build
    from natbench.taskspec import ModelCfg

    torch.manual_seed(seed)
    return build(ModelCfg())


def _digits_batches(n: int, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return [Batch(torch.rand(size if i < n - 1 else 10, 1, 8, 8, generator=g), torch.randint(0, 10, (size if i < n - 1 else 10,), generator=g))
            for i in range(n)]


def _hooks(comp):
    return [c for c in (comp.base, *comp.regularizers, comp.perturbation) if c is not None]


@pytest.mark.parametrize("spec", ["fast-at", "free-at", "vanilla+sam", "pgd-at+mixup", "fast-at+mixup+sam", "free-at+mixup+sam"])
def test_runner_loop_on_a_digits_shaped_model(spec):
    bases = {"fast-at": lambda: FastAT(), "free-at": lambda: FreeAT(FreeAT.Params(m=2)), "vanilla": Vanilla,
             "pgd-at": lambda: PGDAT(PGDAT.Params(steps=2))}
    names = spec.split("+")
    comp = Composite(None, bases[names[0]](), [Mixup()] if "mixup" in names else [],
                     SAM() if "sam" in names else None)
    model, task = _digits_model(), _Task(eps=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    before = _state(model)
    batches = _digits_batches(3)
    for epoch in range(2):
        torch.manual_seed(epoch)
        comp.set_epoch(epoch, 2)
        for batch in batches:
            for _ in range(getattr(comp.base, "replays", 1)):
                out = comp.step_loss(model, batch, task, gen)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                comp.restore()
                for c in _hooks(comp):
                    hook = getattr(c, "after_step", None)
                    if callable(hook):
                        hook(model)
                assert math.isfinite(out.loss.item()) and out.parts
                assert all(math.isfinite(v) for v in out.parts.values())
                if "mixup" in names:
                    assert any(k.startswith("mixup_ce_") for k in out.parts)
        for c in _hooks(comp):
            hook = getattr(c, "epoch_end", None)
            if callable(hook):
                res = hook(model, task, batches[0], gen)
                assert set(res) == {"guard_robust", "stop"} and 0.0 <= res["guard_robust"] <= 1.0
            state = getattr(c, "state_dict", None)
            if callable(state):
                c.load_state_dict(state())
    assert model.training and comp._restore is None
    assert not torch.equal(model.state_dict()["1.fc.weight"], before["1.fc.weight"])
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())
    if names[0] == "free-at":
        d = comp.base.delta
        assert d.shape == (16, 1, 8, 8) and 0 < d.abs().max().item() <= 0.2 + 1e-7
