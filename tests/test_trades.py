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
