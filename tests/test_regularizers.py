"""Golden values for the explicit-regulariser baselines of the NAT paper (Appendix K, Table 11):
EMR (Eq. 16), NNR (Eq. 17) and LASSO (Eq. 15) against hand computations in float64, plus two real
PGD-AT training steps on the digits task with each of them composed on top."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from natbench.compose import Composite
from natbench.contracts import Regularizer, ThreatModel
from natbench.defenses.pgd_at import PGDAT
from natbench.regularizers.emr import EMR
from natbench.regularizers.lasso import LASSO
from natbench.regularizers.nnr import NNR

from helpers import bn_net, softmax

ALL = (EMR, NNR, LASSO)


class _Task:
    """The slice of a classification task the regularizers use; counts forward passes."""

    threat = ThreatModel(eps=0.3, train_steps=3, train_step_size=0.1)

    def __init__(self):
        self.calls = 0

    def logits(self, model, batch, x):
        self.calls += 1
        return model(x)


def _emr_hand(z, lam):  # lam * mean_b( -sum_i p_i log p_i )
    p = softmax(z)
    return lam * float(np.mean(-(p * np.log(p)).sum(1)))


def _nnr_hand(z, lam):  # -lam * mean_b sqrt(sum_i p_i^2)
    p = softmax(z)
    return -lam * float(np.mean(np.sqrt((p ** 2).sum(1))))


def _lasso_hand(model, lam):  # lam * sum over every parameter tensor of |w|
    return lam * float(sum(np.abs(p.detach().numpy()).sum() for p in model.parameters()))


@pytest.fixture
def x_adv(batch):
    noise = 0.2 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return (batch.x + noise).clamp(0, 1)


@pytest.mark.parametrize("cls", ALL)
def test_contract_and_paper_defaults(cls):
    assert isinstance(cls(), Regularizer)
    assert cls.Params.__dataclass_params__.frozen
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(cls.Params))
    assert cls.needs_cache == frozenset() and cls.dependencies == ()
    # Appendix K: lambda_LASSO = 0.0001, lambda_EMR = lambda_NNR = 0.001
    assert {EMR: 0.001, NNR: 0.001, LASSO: 0.0001}[cls] == cls.Params().lam
    assert cls.requires == (frozenset() if cls is LASSO else frozenset({"logits"}))


@pytest.mark.parametrize("with_adv", [False, True], ids=["clean", "adv"])
@pytest.mark.parametrize("cls,hand,part", [(EMR, _emr_hand, "emr_entropy"), (NNR, _nnr_hand, "nnr_norm")])
def test_output_terms_equal_hand_formula(batch, x_adv, cls, hand, part, with_adv):
    model = bn_net(0).eval()  # fixed BN statistics so the hand computation sees the same logits
    lam = 0.37
    cache = {"x_adv": x_adv} if with_adv else {}
    task = _Task()
    out = cls(cls.Params(lam=lam)).loss(model, batch, task, cache)
    used = x_adv if with_adv else batch.x
    with torch.no_grad():
        z = model(used).numpy()
        z_other = model(batch.x if with_adv else x_adv).numpy()
    expected = hand(z, lam)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert abs(hand(z_other, lam) - expected) > 1e-6  # the other input set gives another number: the test can tell
    which = "adv" if with_adv else "clean"
    assert set(out.parts) == {f"{part}_{which}"}
    assert out.parts[f"{part}_{which}"] == pytest.approx(expected / lam if cls is EMR else -expected / lam, rel=1e-12)
    assert task.calls == 1 and f"logits_{which}" in cache  # logits stored for later components

    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("cls", [EMR, NNR])
def test_output_terms_reuse_cached_logits(batch, x_adv, cls):
    """With the base's logits_adv cached (same forward pass), no second forward is made."""
    model = bn_net(0).eval()
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64, requires_grad=True)
    task = _Task()
    out = cls(cls.Params(lam=1.0)).loss(model, batch, task, {"x_adv": x_adv, "logits_adv": z})
    hand = _emr_hand if cls is EMR else _nnr_hand
    assert task.calls == 0
    assert out.loss.item() == pytest.approx(hand(z.detach().numpy(), 1.0), rel=1e-12)
    out.loss.backward()
    assert z.grad is not None


@pytest.mark.parametrize("cls", [EMR, NNR])
def test_output_terms_prefer_sharp_predictions(batch, cls):
    """Both are minimised at one-hot outputs (the text of Appendix K; Eq. 16's printed sign is the opposite)."""
    sharp = torch.zeros(6, 5, dtype=torch.float64)
    sharp[:, 0] = 30.0
    flat = torch.zeros(6, 5, dtype=torch.float64)
    reg, task = cls(cls.Params(lam=1.0)), _Task()
    t_sharp = reg.loss(None, batch, task, {"logits_clean": sharp}).loss.item()
    t_flat = reg.loss(None, batch, task, {"logits_clean": flat}).loss.item()
    assert t_sharp < t_flat
    if cls is EMR:
        assert t_flat == pytest.approx(np.log(5), rel=1e-12) and t_sharp == pytest.approx(0.0, abs=1e-9)
    else:
        assert t_flat == pytest.approx(-1 / np.sqrt(5), rel=1e-12) and t_sharp == pytest.approx(-1.0, rel=1e-9)


@pytest.mark.parametrize("with_adv", [False, True], ids=["clean", "adv"])
def test_lasso_equals_hand_formula(batch, x_adv, with_adv):
    model = bn_net(1)
    lam = 0.25
    task = _Task()
    out = LASSO(LASSO.Params(lam=lam)).loss(model, batch, task, {"x_adv": x_adv} if with_adv else {})
    expected = _lasso_hand(model, lam)  # weights, biases and BN gamma/beta; no buffers
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.parts == {"lasso_l1": pytest.approx(expected / lam, rel=1e-12)}
    assert task.calls == 0  # never looks at the data
    # BN running statistics are buffers, not parameters: changing them leaves the term unchanged
    model[2].running_mean.fill_(100.0)
    assert LASSO(LASSO.Params(lam=lam)).loss(model, batch, task, {}).loss.item() == pytest.approx(expected, rel=1e-12)
    out.loss.backward()
    for p in model.parameters():  # d/dw lam*|w| = lam*sign(w)
        assert torch.allclose(p.grad, lam * p.detach().sign(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("cls", ALL)
def test_zero_weight_gives_exactly_zero(batch, x_adv, cls):
    model = bn_net(0).eval()
    for cache in ({}, {"x_adv": x_adv}):
        out = cls(cls.Params(lam=0.0)).loss(model, batch, _Task(), cache)
        assert out.loss.item() == 0.0
        out.loss.backward()
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.parameters())


@pytest.fixture(scope="module")
def digits():
    from natbench.registry import get_registry
    from natbench.resolve import resolve
    from natbench.tasks.classification import ClassificationTask

    r = resolve(get_registry(), "digits", "pgd-at")
    task = ClassificationTask(r.spec)
    train, _, _ = task.loaders(64, torch.Generator().manual_seed(0))
    return r, task, next(iter(train))


@pytest.mark.parametrize("cls,part", [(EMR, "emr_entropy_adv"), (NNR, "nnr_norm_adv"), (LASSO, "lasso_l1")])
def test_two_pgd_at_steps_on_digits(digits, cls, part):
    from natbench.runner import make_optimizer, train_step

    r, task, batch = digits
    torch.manual_seed(0)
    model = task.build_model()
    reg = cls()
    comp = Composite(None, PGDAT(), [reg], None)  # plan is not used by step_loss
    opt = make_optimizer(r.profile, model)
    before = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        out = train_step(comp, model, batch, task, opt, g)
        assert torch.isfinite(out.loss)
        assert set(out.parts) == {"ce_adv", part} and np.isfinite(out.parts[part])
        sign = -1.0 if cls is NNR else 1.0  # loss = CE(x') + the weighted term
        assert out.loss.item() == pytest.approx(out.parts["ce_adv"] + sign * reg.params.lam * out.parts[part], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
