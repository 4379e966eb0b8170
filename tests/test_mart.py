"""MART (natbench.defenses.mart): its loss and attack against hand computations (float64), and its recipe
profiles."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natbench.contracts import ThreatModel
from natbench.defenses.mart import MART, mart_loss, mart_parts
from natbench.registry import get_registry

from helpers import bn_net, softmax

pytestmark = pytest.mark.usefixtures("one_thread")


class _Task:
    """The slice of a classification task the defenses use."""

    threat = ThreatModel(eps=0.3, train_steps=3, train_step_size=0.1)

    def logits(self, model, batch, x):
        return model(x)

    def objective(self, model, batch, kind):
        assert kind == "ce"
        return lambda z: F.cross_entropy(model(z), batch.y, reduction="none")


def _mart_by_hand(z, z_adv, y, beta):
    n = len(y)
    p, pa = softmax(z), softmax(z_adv)
    masked = pa.copy()
    masked[np.arange(n), y] = -np.inf
    y_hat = masked.argmax(1)  # most probable wrong class of the adversarial prediction
    ce_adv = np.mean(-np.log(pa[np.arange(n), y]))
    bce = ce_adv - np.mean(np.log(1.0001 - pa[np.arange(n), y_hat] + 1e-12))
    kl = (p * (np.log(p) - np.log(pa + 1e-12))).sum(1)  # KL(clean || adv) per sample
    weight = 1.0000001 - p[np.arange(n), y]
    return bce + beta * np.mean(kl * weight), bce, np.mean(kl * weight)


def test_mart_loss_equals_hand_formula(batch):
    model = bn_net(2)
    task = _Task()
    cache = {}
    model.train()
    MART().prepare(model, batch, task, cache, torch.Generator().manual_seed(0))
    assert model.training  # mode restored after the eval-mode attack
    model.eval()  # compare with fixed BN statistics
    out = MART(MART.Params(beta=6.0)).loss(model, batch, task, cache)
    with torch.no_grad():
        z, z_adv = model(batch.x).numpy(), model(cache["x_adv"]).numpy()
    expected, bce, klw = _mart_by_hand(z, z_adv, batch.y.numpy(), 6.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert out.parts["mart_bce"] == pytest.approx(bce, rel=1e-10)
    assert out.parts["mart_kl"] == pytest.approx(klw, rel=1e-10)
    # beta is the weight of the weighted KL only
    out5 = MART(MART.Params(beta=5.0)).loss(model, batch, task, dict(cache))
    assert out5.loss.item() == pytest.approx(_mart_by_hand(z, z_adv, batch.y.numpy(), 5.0)[0], rel=1e-10)
    out.loss.backward()  # both branches carry gradient
    assert cache["logits_clean"].requires_grad and cache["logits_adv"].requires_grad


def test_mart_top2_picks_the_most_probable_wrong_class():
    z_adv = torch.tensor([[5.0, 1.0, 0.0], [0.0, 5.0, 1.0], [1.0, 0.0, 5.0], [0.0, 2.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 2])
    y_hat = [1, 1, 2, 1]  # argmax correct -> runner-up; argmax wrong -> argmax
    pa = softmax(z_adv.numpy())
    margin = -np.mean(np.log(1.0001 - pa[np.arange(4), y_hat] + 1e-12))
    assert mart_parts(z_adv, z_adv, y)["margin"].item() == pytest.approx(margin, rel=1e-12)


def test_mart_weight_is_not_detached():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    za = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    # finite differences see every path, including the one through (1 - p_y(clean))
    assert torch.autograd.gradcheck(lambda a, b: mart_loss(a, b, y, 6.0), (z, za))
    (grad,) = torch.autograd.grad(mart_loss(z, za, y, 6.0), z)
    p, pa = F.softmax(z, 1), F.softmax(za, 1)
    kl = F.kl_div(torch.log(pa + 1e-12), p, reduction="none").sum(1)
    w = (1.0000001 - p.gather(1, y.view(-1, 1)).squeeze(1)).detach()
    (grad_detached,) = torch.autograd.grad(6.0 * (kl * w).mean(), z)
    assert (grad - grad_detached).abs().max() > 1e-3  # the weight's own gradient is there


def test_mart_attack_uses_eval_mode_bn_and_restores_train_mode(batch):
    model = bn_net(2)
    bn = model[2]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    model.train()
    cache = {}
    MART().prepare(model, batch, _Task(), cache, torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])
    assert model.training
    assert all(p.grad is None for p in model.parameters())  # input gradients only
    x_adv = cache["x_adv"]
    assert (x_adv - batch.x).abs().max() <= _Task.threat.eps + 1e-12
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    MART(MART.Params(attack_bn="train")).prepare(model, batch, _Task(), {}, torch.Generator().manual_seed(0))
    assert not model.training  # the caller's mode is restored either way
    assert not torch.equal(bn.running_mean, before[0])  # the explicit alternative does update them


def test_mart_attack_one_step_by_hand(batch):
    model = bn_net(2).eval()
    task = _Task()
    cache = {}
    MART(MART.Params(steps=1)).prepare(model, batch, task, cache, torch.Generator().manual_seed(7))
    noise = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(7))  # from the given generator
    x0 = (batch.x + 0.001 * noise).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x0), batch.y), x0)  # CE, not KL
    eps, alpha = task.threat.eps, task.threat.train_step_size  # step from the task's threat model
    x1 = torch.min(torch.max(x0.detach() + alpha * g.sign(), batch.x - eps), batch.x + eps).clamp(0, 1)
    assert torch.equal(cache["x_adv"], x1)
    cache0 = {}
    MART(MART.Params(steps=0)).prepare(model, batch, task, cache0, torch.Generator().manual_seed(7))
    assert torch.equal(cache0["x_adv"], x0.detach().clamp(0, 1))


def test_mart_attack_increases_ce(batch):
    model = bn_net(2).eval()
    cache = {}
    MART(MART.Params(steps=10, step_size=0.05)).prepare(model, batch, _Task(), cache, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ce_adv = F.cross_entropy(model(cache["x_adv"]), batch.y).item()
        ce_clean = F.cross_entropy(model(batch.x), batch.y).item()
    assert ce_adv > ce_clean + 0.1


def test_mart_class_attributes():
    assert MART.ce_on == frozenset({"adv"}) and MART.select_on == "robust"
    assert {"x_adv", "logits_clean", "logits_adv"} <= MART.provides
    assert MART.Params().beta == 6.0 and MART.Params().attack_bn == "eval"


def test_mart_recipe_follows_the_architecture():
    """MART's two scripts: train_resnet.py (ResNet-18: beta 5, lr 0.01, wd 3.5e-3, 120 epochs) and
    train_wideresnet.py (WRN-34-10: beta 6, lr 0.1, wd 7e-4, 90 epochs). A profile never mixes them."""
    from natbench.resolve import resolve

    reg = get_registry()
    r18 = resolve(reg, "cifar10", "mart", profile="mart")
    assert r18.config["task"]["model"]["arch"] == "resnet18" and r18.params["mart"].beta == 5.0
    p = r18.profile
    assert (p.epochs, p.lr, p.weight_decay, p.milestones, p.batch_size) == (120, 0.01, 3.5e-3, (74, 89, 99), 128)
    wrn = resolve(reg, "cifar10", "mart", profile="mart-wrn")
    assert wrn.config["task"]["model"]["arch"] == "wrn34_10" and wrn.params["mart"].beta == 6.0
    p = wrn.profile
    assert (p.epochs, p.lr, p.weight_decay, p.milestones, p.batch_size) == (90, 0.1, 7e-4, (74, 89), 128)
    assert resolve(reg, "cifar10", "mart+awp", profile="mart").params["mart"].beta == 5.0
    assert resolve(reg, "cifar10", "pgd-at", profile="mart").profile.lr == 0.01  # the schedule as a baseline


def test_mart_inner_max_in_l2_is_pgd_l2_from_the_gaussian_start():
    """norm l2 (issue 16; MART's reference is L-inf only): from x + init_std * N(0, I), each step adds
    step * g / ||g||_2 and scales into the L2 ball, then [0, 1]; by hand on a linear loss w.x."""
    from natbench.defenses._common import gaussian_start_ascent

    w = torch.tensor([3.0, 0.0, -4.0, 0.0], dtype=torch.float64)
    x = torch.full((2, 4), 0.5, dtype=torch.float64)
    out = gaussian_start_ascent(lambda z: (z @ w).sum(), x, eps=0.3, steps=2, step_size=0.2, init_std=0.001,
                                generator=torch.Generator().manual_seed(0), norm="l2")
    n = 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).double()
    d = n + 0.2 * w / 5
    d = d * (0.3 / d.norm(dim=1, keepdim=True)).clamp(max=1.0)  # each step scaled back into the ball
    d = d + 0.2 * w / 5
    d = d * (0.3 / d.norm(dim=1, keepdim=True)).clamp(max=1.0)
    assert torch.allclose(out, (x + d).clamp(0, 1), atol=1e-12)
    assert (out - x).norm(dim=1).max() <= 0.3 + 1e-9
