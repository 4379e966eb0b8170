"""Golden values: the NAT term and the TRADES loss against formulas computed by hand (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natbench.contracts import Batch, ThreatModel
from natbench.defenses.trades import TRADES
from natbench.defenses.vanilla import Vanilla
from natbench.regularizers.nat import NAT, nasty_kl


class _Task:
    """The slice of a classification task the losses use."""

    threat = ThreatModel(eps=0.3, train_steps=3, train_step_size=0.1)

    def logits(self, model, batch, x):
        return model(x)

    def objective(self, model, batch, kind):
        return lambda z: F.cross_entropy(model(z), batch.y, reduction="none")


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5)).double()


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _kl_rows(p, q):  # KL(p || q) per row
    return (p * (np.log(p) - np.log(q))).sum(1)


def _ce(z, y):
    return float(np.mean(-np.log(_softmax(z)[np.arange(len(y)), y])))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    return Batch(x, y)


def test_nat_term_equals_hand_formula(batch):
    target, adversary = _net(0), _net(1)
    x_adv = (batch.x + 0.1 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).clamp(0, 1)
    omega, tau = 0.05, 3.0
    nat = NAT(NAT.Params(omega=omega, tau=tau))
    nat.bind("adversary", adversary)
    target.eval()  # fixed BN statistics so the hand computation sees the same logits
    cache = {"x_adv": x_adv, "ce_on": frozenset({"adv"})}  # as after PGD-AT: CE on adv already counted
    out = nat.loss(target, batch, _Task(), cache)

    with torch.no_grad():
        zt_c, zt_a = target(batch.x).numpy(), target(x_adv).numpy()
        za_c, za_a = adversary(batch.x).numpy(), adversary(x_adv).numpy()
    y = batch.y.numpy()
    kl_c = _kl_rows(_softmax(zt_c / tau), _softmax(za_c / tau)).sum() / len(y)  # batchmean, KL(target || adversary)
    kl_a = _kl_rows(_softmax(zt_a / tau), _softmax(za_a / tau)).sum() / len(y)
    expected = _ce(zt_c, y) - omega * tau**2 * (kl_c + kl_a)  # CE only on clean: the base has CE(adv)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)

    # The reverse direction KL(adversary || target) is a different number: the test can tell.
    kl_rev = _kl_rows(_softmax(za_c / tau), _softmax(zt_c / tau)).sum() / len(y)
    assert abs(kl_rev - kl_c) / kl_c > 1e-3  # >> the 1e-10 tolerance of the assertion above
    assert out.parts["nat_kl_clean"] == pytest.approx(tau**2 * kl_c, rel=1e-10)

    # Gradients reach the target model only; the adversary is frozen and stays in eval mode.
    out.loss.backward()
    assert all(p.grad is not None for p in target.parameters())
    assert all(p.grad is None for p in adversary.parameters())
    assert not adversary.training


def test_nat_adds_ce_for_inputs_the_base_lacks(batch):
    target, adversary = _net(0), _net(1)
    target.eval()
    nat = NAT(NAT.Params(omega=0.0))  # omega 0: only the CE completion remains
    nat.bind("adversary", adversary)
    x_adv = batch.x.flip(0)
    with torch.no_grad():
        ce_c = F.cross_entropy(target(batch.x), batch.y).item()
        ce_a = F.cross_entropy(target(x_adv), batch.y).item()
    for ce_on, expected in [({"adv"}, ce_c), ({"clean"}, ce_a), (set(), ce_c + ce_a), ({"clean", "adv"}, 0.0)]:
        out = nat.loss(target, batch, _Task(), {"x_adv": x_adv, "ce_on": frozenset(ce_on)})
        assert out.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_nasty_kl_scaling_and_reduction():
    g = torch.Generator().manual_seed(0)
    zt, za = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)
    for tau in (1.0, 4.0, 20.0):
        hand = tau**2 * _kl_rows(_softmax(zt.numpy() / tau), _softmax(za.numpy() / tau)).mean()
        assert nasty_kl(zt, za, tau).item() == pytest.approx(hand, rel=1e-10)


def test_trades_loss_equals_reference_formula(batch):
    model = _net(2)
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
    expected = _ce(z, y) + 6.0 * _kl_rows(_softmax(z), _softmax(z_adv)).sum() / len(y)  # KL(clean || adv), sum / B
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
    model = _net(2).train()
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
    model = _net(2)
    bn = model[2]
    before = bn.running_mean.clone()
    model.train()
    TRADES().prepare(model, batch, _Task(), {}, torch.Generator().manual_seed(0))
    assert torch.equal(bn.running_mean, before)  # eval mode: running statistics untouched
    cache = {}
    TRADES(TRADES.Params(attack_bn="train")).prepare(model, batch, _Task(), cache, torch.Generator().manual_seed(0))
    assert not torch.equal(bn.running_mean, before)  # the explicit alternative does update them


def test_trades_attack_increases_kl(batch):
    model = _net(2).eval()
    cache = {}
    TRADES(TRADES.Params(steps=10)).prepare(model, batch, _Task(), cache, torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model(batch.x)
        kl_adv = F.kl_div(F.log_softmax(model(cache["x_adv"]), 1), F.softmax(z, 1), reduction="sum").item()
        noise = (batch.x + 0.001 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        kl_start = F.kl_div(F.log_softmax(model(noise), 1), F.softmax(z, 1), reduction="sum").item()
    assert kl_adv > 100 * kl_start


def test_vanilla_is_plain_ce(batch):
    model = _net(0).eval()
    out = Vanilla().loss(model, batch, _Task(), {})
    with torch.no_grad():
        assert out.loss.item() == pytest.approx(_ce(model(batch.x).numpy(), batch.y.numpy()), rel=1e-12)
