"""AWP (natbench.perturbations.awp) against hand computations (float64), inside ``Composite`` /
``runner.train_step`` on random digits-sized data and (with MART, PGD-AT, TRADES) on the real digits task,
its warm-up against each reference loop and its recipe profiles."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natbench.compose import Composite, check_params, plan
from natbench.contracts import Batch
from natbench.models.small_cnn import SmallCNN
from natbench.perturbations.awp import AWP
from natbench.registry import get_registry
from natbench.runner import make_optimizer, train_step

from helpers import TaskSlice, registry_with, snapshot, train_steps

NEW_ENTRIES = {  # what natbench/registry.yaml gets for these plugins (added here if it lacks them)
    ("defenses", "mart"): "natbench.defenses.mart:MART",
    ("perturbations", "awp"): "natbench.perturbations.awp:AWP",
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5)).double()


def _awp_by_hand(model, loss_fn, gamma, lr):
    """``{param name: gamma * ||w|| * d / ||d||}``, d from one SGD step on -loss on a copy (train mode)."""
    twin = copy.deepcopy(model).train()
    named = [(n, p) for n, p in twin.named_parameters()]
    grads = torch.autograd.grad(-loss_fn(twin), [p for _, p in named])
    out = {}
    for (name, w), g in zip(named, grads):
        if "weight" in name and w.dim() >= 2:
            w = w.detach()
            d = (w - lr * g) - w
            out[name] = gamma * w.norm() * d / d.norm()
    return out


def _simple_loss(batch):
    return lambda m: F.cross_entropy(m(batch.x), batch.y)


def test_awp_moves_each_kernel_by_gamma_norm_w_along_the_ascent_direction(batch):
    model = _convnet(0).train()
    gamma, lr = 0.01, 0.01
    sentinel = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters() if n.startswith("0.")}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone() if n in sentinel else None  # a previous step's gradients
    before = snapshot(model)
    expected = _awp_by_hand(model, _simple_loss(batch), gamma, lr)
    assert set(expected) == {"0.weight", "4.weight"}  # the conv and the linear kernel only
    awp = AWP(AWP.Params(gamma=gamma, proxy_lr=lr))
    restore = awp.apply(model, _simple_loss(batch))
    after = snapshot(model)
    for name, value in before.items():
        if name in expected:
            moved = after[name] - value
            assert torch.allclose(moved, expected[name], rtol=1e-9, atol=1e-15), name
            assert moved.norm().item() == pytest.approx(gamma * value.norm().item(), rel=1e-9)
        else:  # biases, BN affine parameters, running statistics, num_batches_tracked
            assert torch.equal(after[name], value), name
    for n, p in model.named_parameters():  # the proxy step wrote no gradient into the model
        assert (p.grad is None) if n not in sentinel else torch.equal(p.grad, sentinel[n])
    # gradient *ascent*: the perturbed model has the larger loss (evaluated on copies: BN stats stay)
    perturbed = _simple_loss(batch)(copy.deepcopy(model)).item()
    restore()
    for name, value in before.items():
        assert torch.equal(model.state_dict()[name], value), name  # bit-exact: no step in between
    assert perturbed > _simple_loss(batch)(copy.deepcopy(model)).item()
    restore()  # a second call changes nothing
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_awp_proxy_lr_cancels_and_proxy_is_resynced(batch):
    model = _convnet(1).train()
    small, large = AWP(AWP.Params(proxy_lr=0.01)), AWP(AWP.Params(proxy_lr=1.0))
    v_small = small.perturbation(model, _simple_loss(batch))
    v_large = large.perturbation(model, _simple_loss(batch))
    for name in v_small:
        assert torch.allclose(v_small[name], v_large[name], rtol=1e-9, atol=1e-14)
    proxy = small._proxy
    with torch.no_grad():  # as an optimizer step would
        model[4].weight.add_(0.05)
        model[0].weight.mul_(1.1)
    before = snapshot(model)
    expected = _awp_by_hand(model, _simple_loss(batch), 5e-3, 0.01)
    restore = small.apply(model, _simple_loss(batch))
    assert small._proxy is proxy  # one proxy, reloaded from the model at every call
    for name in expected:
        assert torch.allclose(model.state_dict()[name] - before[name], expected[name], rtol=1e-9, atol=1e-15)
    restore()
    other = _convnet(2).train()
    small.apply(other, _simple_loss(batch))()
    assert small._proxy is not proxy  # a different model gets its own proxy


def test_awp_is_a_no_op_inside_warmup_and_with_zero_gamma(batch):
    def must_not_run(m):
        raise AssertionError("no proxy step during warmup")

    model = _convnet(0).train()
    before = snapshot(model)
    awp = AWP(AWP.Params(warmup=2))
    for epoch in (0, 1):
        awp.set_epoch(epoch, 5)
        restore = awp.apply(model, must_not_run)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        restore()
    awp.set_epoch(2, 5)  # 0-indexed epoch 2: AT-AWP's --awp-warmup 2, TRADES-AWP's (1-indexed epoch 3) --awp-warmup 3
    restore = awp.apply(model, _simple_loss(batch))
    assert not torch.equal(model[0].weight, before["0.weight"])
    restore()
    AWP(AWP.Params(gamma=0.0)).apply(model, must_not_run)()  # gamma 0 switches AWP off, as the reference
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert AWP().active  # warmup 0: active before any set_epoch


def test_awp_rejects_bad_params():
    from natbench.errors import ConfigError

    for bad in (dict(gamma=-1e-3), dict(warmup=-1), dict(proxy_lr=0.0)):
        with pytest.raises(ConfigError):
            AWP(AWP.Params(**bad))


def _composite(spec: str, params: dict | None = None) -> Composite:
    p = plan(spec, registry_with(NEW_ENTRIES), frozenset({"logits"}))
    return Composite.build(p, check_params(p, params or {}))


def _digits_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(16, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g))


def _digits_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(1, 10, width=4).double()


@pytest.mark.parametrize("spec", ["pgd-at+awp", "trades+awp", "mart+awp"])
def test_train_step_with_awp_keeps_only_the_optimizer_update(spec):
    comp = _composite(spec, {"awp": {"gamma": 0.01}})
    assert comp.plan.canonical == spec and isinstance(comp.perturbation, AWP)
    model, task, lr = _digits_model(), TaskSlice(eps=0.2, steps=2, step_size=0.05), 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    comp.set_epoch(0, 2)
    for step in range(2):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = train_step(comp, model, _digits_batch(step), task, opt, gen)
        assert math.isfinite(out.loss.item()) and out.parts
        assert comp._restore is None
        for n, p in model.named_parameters():  # w_after = w_before - lr * grad (taken at w + gamma v)
            assert torch.allclose(p.detach(), before[n] - lr * p.grad, rtol=0, atol=1e-12), n


@pytest.mark.parametrize("base", ["pgd-at", "trades", "mart"])
def test_awp_loss_is_taken_at_the_perturbed_weights(base):
    task, batch = TaskSlice(eps=0.2, steps=2, step_size=0.05), _digits_batch(5)

    def loss_of(spec, params=None):
        model = _digits_model(3)
        comp = _composite(spec, params)
        out = comp.step_loss(model, batch, task, torch.Generator().manual_seed(1))
        comp.restore()
        return out.loss.item()

    plain = loss_of(base)
    assert loss_of(f"{base}+awp", {"awp": {"gamma": 0.0}}) == plain  # gamma 0: exactly the base loss
    assert loss_of(f"{base}+awp", {"awp": {"gamma": 0.02}}) > plain  # same x', worse weights


@pytest.mark.parametrize("spec", ["mart", "mart+awp", "pgd-at+awp", "trades+awp"])
def test_two_steps_on_the_real_digits_task(spec):
    from natbench.resolve import resolve
    from natbench.tasks.classification import ClassificationTask

    r = resolve(get_registry(), "digits", "pgd-at", seed=0, sets=["threat_model.train_steps=2"])
    task = ClassificationTask(r.spec)
    torch.manual_seed(0)
    model = task.build_model()
    comp = _composite(spec, {"awp": {"gamma": 0.01}} if "awp" in spec else None)
    comp.set_epoch(0, r.profile.epochs)
    opt = make_optimizer(r.profile, model)
    gen = torch.Generator().manual_seed(0)
    train, _, _ = task.loaders(r.profile.batch_size, gen)
    before = snapshot(model)
    for _, out in train_steps(comp, model, train, task, opt, gen, n=2):
        assert math.isfinite(out.loss.item())
        assert out.parts and all(math.isfinite(v) for v in out.parts.values())
        if spec.startswith("mart"):
            assert {"ce_adv", "mart_bce", "mart_kl"} <= set(out.parts)
    assert model.training
    assert not torch.equal(model.state_dict()["1.fc.weight"], before["1.fc.weight"])
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())


@pytest.mark.parametrize("script,first", [("at-awp", 0), ("trades-awp", 1)])
def test_awp_warmup_matches_each_reference_loop(script, first):
    """AT_AWP/train_cifar10.py loops epochs from 0, trades_AWP/train_trades_cifar.py from 1; both perturb
    when ``epoch >= --awp-warmup``. The epochs (in training order) with AWP must be the same in natbench."""
    from natbench.perturbations.awp import reference_warmup

    epochs = 12
    for w in range(0, 12):
        ref = [e >= w for e in range(first, epochs + first)]
        awp = AWP(AWP.Params(warmup=reference_warmup(script, w)))
        ours = []
        for e in range(epochs):
            awp.set_epoch(e, epochs)
            ours.append(awp.active)
        assert ours == ref, (script, w)
    assert reference_warmup("at-awp", 5) == 5 and reference_warmup("trades-awp", 10) == 9  # SVHN run; TRADES-AWP default


def test_awp_recipe_profiles_carry_their_reference_params():
    """cifar10 at-awp = AT-AWP's CIFAR runs (gamma 0.01, AWP from the first epoch); trades-awp = TRADES-AWP's
    defaults (gamma 5e-3, warmup 10 over 1-indexed epochs); without +awp the same profile is the baseline."""
    from natbench.resolve import resolve

    reg = get_registry()
    at = resolve(reg, "cifar10", "pgd-at+awp", profile="at-awp")
    assert at.params["awp"] == AWP.Params(gamma=0.01, warmup=0) and at.variant == ""
    tr = resolve(reg, "cifar10", "trades+awp", profile="trades-awp")
    assert tr.params["awp"] == AWP.Params(gamma=5e-3, warmup=9) and tr.params["trades"].beta == 6.0
    assert set(resolve(reg, "cifar10", "pgd-at", profile="at-awp").params) == {"pgd-at"}
    assert resolve(reg, "cifar10", "pgd-at+awp", profile="at-awp", sets=["awp.gamma=0.005"]).variant == "awp.gamma=0.005"
    # a dependency run under the same profile gets the recipe's params for its own defense
    from natbench.resolve import with_defense

    r = resolve(reg, "cifar10", "pgd-at", profile="trades-awp", sets=["model.arch=preact_resnet18"])
    dep = with_defense(reg, r, "trades+awp")
    assert dep.params["awp"].warmup == 9 and dep.variant == "model.arch=preact_resnet18"
    assert dep.config["task"]["model"]["arch"] == "preact_resnet18"  # the user's --set, not reset by the profile
