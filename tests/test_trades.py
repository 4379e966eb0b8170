"""TRADES (natbench.defenses.trades): its loss against the reference formula and its train-mode step against
the reference's passes (float64, by hand), the forwards check, and its attack (eval-mode BN, increases the KL)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natbench.contracts import ThreatModel
from natbench.defenses.trades import TRADES

from helpers import bn_net, softmax


class _Task:
    """The slice of a classification task the losses use."""

    threat = ThreatModel(eps=0.3, train_steps=3, train_step_size=0.1)

    def logits(self, model, batch, x):
        return model(x)

    def objective(self, model, batch, kind):
        return lambda z: F.cross_entropy(model(z), batch.y, reduction="none")


def _kl_rows(p, q):  # KL(p || q) per row
    return (p * (np.log(p) - np.log(q))).sum(1)


def _ce(z, y):
    return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


def test_trades_loss_equals_reference_formula(batch):
    model = bn_net(2)
    trades = TRADES(TRADES.Params(beta=6.0))
    task = _Task()
    cache = {}
    model.train()
    trades.prepare(model, batch, task, cache, torch.Generator().manual_seed(0))
    assert model.training  # mode restored after the eval-mode attack
    x_adv = cache["x_adv"]
    assert (x_adv - batch.x).abs().max() <= task.threat.eps + 1e-12
    model.eval()  # compare with fixed BN statistics
    out = trades.loss(model, batch, task, cache)
    with torch.no_grad():
        z, z_adv = model(batch.x).numpy(), model(x_adv).numpy()
    y = batch.y.numpy()
    expected = _ce(z, y) + 6.0 * _kl_rows(softmax(z), softmax(z_adv)).sum() / len(y)  # KL(clean || adv), sum / B
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    out.loss.backward()  # neither branch detached: both clean and adversarial logits carry gradient
    assert cache["logits_clean"].requires_grad and cache["logits_adv"].requires_grad


def _bn_state(model):
    bn = model[2]
    return bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)


def _reference_trades_outer(model, x, x_adv, y, beta, passes):
    """trades.py's outer loss written out (train mode): logits = f(x); CE; KL_sum(log_softmax(f(x')),
    softmax(f(x))) / B, f(x) computed again as the KL target when ``passes == 3`` (as the reference)."""
    logits = model(x)
    z_adv = model(x_adv)
    target = model(x) if passes == 3 else logits
    kl = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(z_adv, dim=1), F.softmax(target, dim=1))
    return F.cross_entropy(logits, y) + beta * kl / len(y)


@pytest.mark.parametrize("forwards", [3, 2])
def test_trades_train_mode_step_matches_the_reference_passes(batch, forwards):
    """In train mode: the loss and gradients equal trades.py's, and the BatchNorm running statistics
    took the reference's three updates (x, x', x) by default, two (x, x') with ``forwards=2``."""
    import copy

    task = _Task()
    model = bn_net(2).train()
    cache = {}
    trades = TRADES(TRADES.Params(beta=6.0, forwards=forwards))
    trades.prepare(model, batch, task, cache, torch.Generator().manual_seed(0))
    ref, ref3 = copy.deepcopy(model), copy.deepcopy(model)
    out = trades.loss(model, batch, task, cache)
    out.loss.backward()
    expected = _reference_trades_outer(ref, batch.x, cache["x_adv"], batch.y, 6.0, forwards)
    expected.backward()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    mean, var, n = _bn_state(model)
    rmean, rvar, rn = _bn_state(ref)
    assert n == rn == forwards
    torch.testing.assert_close(mean, rmean, rtol=0, atol=1e-14)
    torch.testing.assert_close(var, rvar, rtol=0, atol=1e-14)
    # the two readings differ only in the running statistics (not in the loss)
    three = _reference_trades_outer(ref3, batch.x, cache["x_adv"], batch.y, 6.0, 3)
    assert three.item() == pytest.approx(out.loss.item(), rel=1e-12)
    assert (forwards == 3) == torch.allclose(_bn_state(ref3)[0], mean, rtol=0, atol=1e-14)


def test_trades_forwards_is_checked():
    from natbench.errors import ConfigError

    with pytest.raises(ConfigError, match="forwards"):
        TRADES(TRADES.Params(forwards=1))
    assert TRADES.Params().forwards == 3


def test_trades_attack_uses_eval_mode_bn(batch):
    model = bn_net(2)
    bn = model[2]
    before = bn.running_mean.clone()
    model.train()
    TRADES().prepare(model, batch, _Task(), {}, torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, before)  # eval mode: running statistics untouched
    cache = {}
    TRADES(TRADES.Params(attack_bn="train")).prepare(model, batch, _Task(), cache, torch.Generator().manual_seed(0))
    assert not torch.equal(bn.running_mean, before)  # the explicit alternative does update them


def test_trades_attack_increases_kl(batch):
    model = bn_net(2).eval()
    cache = {}
    TRADES(TRADES.Params(steps=10)).prepare(model, batch, _Task(), cache, torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model(batch.x)
        kl_adv = F.kl_div(F.log_softmax(model(cache["x_adv"]), 1), F.softmax(z, 1), reduction="sum").item()
        noise = (batch.x + 0.001 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        kl_start = F.kl_div(F.log_softmax(model(noise), 1), F.softmax(z, 1), reduction="sum").item()
    assert kl_adv > 100 * kl_start


# --------------------------------------------------------------------------- L2 (issue 16)
def _authors_l2_loop(model, x_natural, delta0, epsilon, perturb_steps):
    """A transcription of yaodongyu/TRADES trades.py's ``distance == 'l_2'`` branch (CPU, the start given)."""
    criterion_kl = torch.nn.KLDivLoss(reduction="sum")
    batch_size = len(x_natural)
    delta = delta0.clone().requires_grad_(True)
    optimizer_delta = torch.optim.SGD([delta], lr=epsilon / perturb_steps * 2)
    for _ in range(perturb_steps):
        adv = x_natural + delta
        optimizer_delta.zero_grad()
        with torch.enable_grad():
            loss = (-1) * criterion_kl(F.log_softmax(model(adv), dim=1), F.softmax(model(x_natural), dim=1))
        loss.backward()
        grad_norms = delta.grad.view(batch_size, -1).norm(p=2, dim=1)
        delta.grad.div_(grad_norms.view(-1, 1, 1, 1))
        optimizer_delta.step()
        delta.data.add_(x_natural)
        delta.data.clamp_(0, 1).sub_(x_natural)
        delta.data.renorm_(p=2, dim=0, maxnorm=epsilon)
    return torch.clamp(x_natural + delta.detach(), 0.0, 1.0)


def test_trades_l2_inner_max_is_the_authors_l2_branch():
    from helpers import batch8, bn_net64

    model, b = bn_net64(4).eval(), batch8(5, lo=0.0, hi=1.0)
    eps, steps = 1.0, 5

    class Task(_Task):
        threat = ThreatModel(norm="l2", eps=eps, train_steps=steps, train_step_size=0.25)  # TRADES uses 2 eps / K

    cache = {}
    TRADES().prepare(model, b, Task(), cache, torch.Generator().manual_seed(7))
    delta0 = 0.001 * torch.randn(b.x.shape, generator=torch.Generator().manual_seed(7)).double()
    ref = _authors_l2_loop(model, b.x, delta0, eps, steps)
    assert torch.allclose(cache["x_adv"], ref, atol=1e-12)
    d = (cache["x_adv"] - b.x).flatten(1).norm(dim=1)
    assert d.max() <= eps + 1e-6 and d.min() > 0.5  # it walked towards the boundary (5 steps of 0.4)
    assert model.training is False  # prepare restores the mode it found


def test_trades_l2_zero_gradient_rows_take_a_random_step():
    """A constant model has a zero KL gradient: every row steps by -lr * N(0, I) from the generator (the
    reference's randn_like replacement), then projects; by hand for one step."""
    from natbench.defenses._common import trades_l2_ascent

    x = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    out = trades_l2_ascent(lambda z: (z * 0).sum(), x, eps=0.1, steps=1, step_size=0.05, init_std=0.001, generator=g)
    g = torch.Generator().manual_seed(3)
    d0 = 0.001 * torch.randn(x.shape, generator=g).double()
    r = torch.randn(x.shape, generator=g).double()
    d = ((x + d0 - 0.05 * r).clamp(0, 1) - x).renorm(p=2, dim=0, maxnorm=0.1)
    assert torch.allclose(out, x + d)
