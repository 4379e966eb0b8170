"""The adaptive attack (natbench.attacks.adaptive): it attacks the defense's own training objective (NAT's
Eq. 14, TRADES, NuAT and the regularizer terms by hand), needs one, and on a vanilla model is APGD-CE bit
for bit."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from natbench.attacks.adaptive import Adaptive
from natbench.attacks.apgd import APGDCE
from natbench.attacks.pgd import PGD
from natbench.compose import Composite
from natbench.contracts import Batch, LogitsObjective
from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.resolve import resolve

from helpers import digits_task

REG = get_registry()


def _model(task, seed):
    torch.manual_seed(seed)
    return task.build_model().eval().double()


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g))


def _composite(defense, task, adversary=None):
    r = resolve(REG, "digits", defense)
    c = Composite.build(r.plan, r.params)
    for comp, dep in c.dependencies():
        comp.bind(dep.role, adversary)
    return c


def test_nat_objective_is_eq14_and_differentiates_through_the_adversary():
    _, task = digits_task()
    target, adversary = _model(task, 0), _model(task, 1)
    c = _composite("nat", task, adversary)
    nat = c.regularizers[0].params
    b = _batch()
    x_adv = (b.x + 0.1 * torch.rand_like(b.x)).clamp(0, 1).requires_grad_(True)
    obj = c.adaptive_objective(target, b, task)
    loss = obj(x_adv)
    zt, za = target(x_adv), adversary(x_adv)
    pt, pa = F.softmax(zt / nat.tau, 1), F.softmax(za / nat.tau, 1)
    kl = (pt * (pt.log() - pa.log())).sum(1)  # KL(p_t || p_a) per sample, by hand
    expected = F.cross_entropy(zt, b.y, reduction="none") - nat.omega * nat.tau ** 2 * kl  # Eq. 14 (pgd-at's CE)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(loss.sum(), x_adv)
    (g_ref,) = torch.autograd.grad(expected.sum(), x_adv, retain_graph=True)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    frozen = F.cross_entropy(zt, b.y, reduction="none") - nat.omega * nat.tau ** 2 * (pt * (pt.log() - pa.detach().log())).sum(1)
    (g_frozen,) = torch.autograd.grad(frozen.sum(), x_adv)
    assert not torch.allclose(g, g_frozen), "the adversary's dependence on x' must be differentiated"
    assert all(not p.requires_grad for p in adversary.parameters())
    # loss_logits on a subset of rows: the same numbers as the full batch's rows
    idx = torch.tensor([3, 0, 7])
    sub, z = obj.loss_logits(x_adv.detach()[idx], idx)
    torch.testing.assert_close(sub, loss.detach()[idx])
    torch.testing.assert_close(z, target(x_adv.detach()[idx]))


@pytest.mark.parametrize("defense", ["pgd-at", "fast-at", "free-at", "trades", "mart"])
def test_adaptive_loss_averages_to_the_training_loss(defense):
    """For bases whose loss is a batch mean over per-sample terms, the mean of the adaptive
    objective at x' is exactly the training loss the defense computes with x_adv = x'."""
    _, task = digits_task()
    model = _model(task, 0)
    c = _composite(defense, task)
    b = _batch()
    x_adv = (b.x + 0.15 * (2 * torch.rand_like(b.x) - 1)).clamp(0, 1)
    training = c.base.loss(model, b, task, {"x_adv": x_adv, "ce_on": c.base.ce_on}).loss
    torch.testing.assert_close(c.adaptive_objective(model, b, task)(x_adv).mean(), training, rtol=1e-9, atol=1e-12)


def test_vanilla_trades_nuat_and_regularizer_terms_by_hand():
    _, task = digits_task()
    model, b = _model(task, 0), _batch()
    x_adv = (b.x + 0.1).clamp(0, 1)
    z, za = model(b.x), model(x_adv)
    ce_adv = F.cross_entropy(za, b.y, reduction="none")
    torch.testing.assert_close(_composite("vanilla", task).adaptive_objective(model, b, task)(x_adv), ce_adv)
    kl = (F.softmax(z, 1) * (F.log_softmax(z, 1) - F.log_softmax(za, 1))).sum(1)
    torch.testing.assert_close(_composite("trades", task).adaptive_objective(model, b, task)(x_adv),
                               F.cross_entropy(z, b.y, reduction="none") + 6.0 * kl)
    nuat = _composite("nuat", task)
    lam = nuat.base.params.lam_max
    got = nuat.adaptive_objective(model, b, task)(x_adv)
    one = torch.stack([torch.linalg.matrix_norm((z - za)[i:i + 1], ord="nuc") for i in range(len(b))])  # B = 1
    torch.testing.assert_close(got, F.cross_entropy(z, b.y, reduction="none") + lam * one)
    p = F.softmax(za, 1)
    emr = _composite("pgd-at+emr", task)
    torch.testing.assert_close(emr.adaptive_objective(model, b, task)(x_adv),
                               ce_adv + emr.regularizers[0].params.lam * -(p * p.log()).sum(1))
    nnr = _composite("pgd-at+nnr", task)
    torch.testing.assert_close(nnr.adaptive_objective(model, b, task)(x_adv),
                               ce_adv - nnr.regularizers[0].params.lam * p.norm(dim=1))
    # LASSO (no input) and mixup (couples samples) add nothing; AWP/EMA are weight-level
    for spec in ("pgd-at+lasso", "pgd-at+mixup", "pgd-at+awp", "pgd-at+ema"):
        torch.testing.assert_close(_composite(spec, task).adaptive_objective(model, b, task)(x_adv), ce_adv)


def test_vanilla_plus_nat_treats_the_attacked_input_as_the_clean_one():
    _, task = digits_task()
    target, adversary = _model(task, 0), _model(task, 1)
    c = _composite("vanilla+nat", task, adversary)
    b = _batch()
    x_adv = (b.x + 0.1).clamp(0, 1)
    nat = c.regularizers[0].params
    zt, za = target(x_adv), adversary(x_adv)
    pt, pa = F.softmax(zt / nat.tau, 1), F.softmax(za / nat.tau, 1)
    expected = F.cross_entropy(zt, b.y, reduction="none") - nat.omega * nat.tau ** 2 * (pt * (pt / pa).log()).sum(1)
    torch.testing.assert_close(c.adaptive_objective(target, b, task)(x_adv), expected)


def test_every_base_defense_defines_its_adaptive_objective():
    for name in REG.names("defenses"):
        assert callable(getattr(REG.load("defenses", name), "adaptive_loss", None)), name


def test_adaptive_apgd_on_a_vanilla_model_is_apgd_ce_bit_for_bit():
    _, task = digits_task()
    model = _model(task, 0).float()
    g = torch.Generator().manual_seed(3)
    b = Batch(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    with torch.no_grad():
        b.y[:30] = model(b.x[:30]).argmax(1)  # most points start correct
    obj = _composite("vanilla", task).adaptive_objective(model, b, task)
    ours = Adaptive(Adaptive.Params(steps=10))(obj, b.x, eps=0.1, generator=torch.Generator().manual_seed(0))
    ref = APGDCE(APGDCE.Params(steps=10))(LogitsObjective(model, b.y, 10), b.x, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours, ref)
    pgd = Adaptive(Adaptive.Params(method="pgd", steps=5))(obj, b.x, eps=0.1, generator=torch.Generator().manual_seed(1))
    ref = PGD(PGD.Params(steps=5))(task.objective(model, b, "ce"), b.x, eps=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pgd, ref)


def test_adaptive_needs_a_defense_objective():
    _, task = digits_task()
    model, b = _model(task, 0).float(), _batch().x.float()
    with pytest.raises(ConfigError, match="objective kind 'defense'"):
        Adaptive()(task.objective(model, Batch(b, torch.zeros(len(b), dtype=torch.long)), "ce"), b, eps=0.1)
    with pytest.raises(ConfigError):
        Adaptive(Adaptive.Params(method="fgsm"))
