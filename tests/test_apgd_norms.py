"""APGD in L2 and L1 (natbench.attacks._apgd_norms, natbench.attacks.apgd) against the authors' package.

At matched seeds natbench and ``pyautoattack`` 0.2.0 (``APGDAttack``, ``APGDAttack_targeted``, norm
``L2``/``L1``, with and without ``use_largereps``) draw the same random starts, so the comparison is per
sample: flags equal, and ``x'`` equal to the bit without early stop. A tiny MLP on 8x8 inputs keeps it
fast. The L1 projection is checked against a hand-derived case, the soft-threshold solution of the
projection's optimality conditions (computed in float64 by bisection) and the original's function.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from natbench.attacks._apgd_norms import l1_projection, largereps_schedule
from natbench.attacks._base import lp_norms, with_norm
from natbench.attacks.apgd import APGDCE, APGDDLR, APGDT
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError

from helpers import correct, gen

pyaa = pytest.importorskip("pyautoattack.autopgd_base")

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"l2": 0.5, "l1": 2.0}
PYNORM = {"l2": "L2", "l1": "L1"}


@pytest.fixture(scope="module")
def mlp():
    """A fixed random 2-layer MLP on 1x8x8 inputs (10 classes), 30 points, a few of them misclassified."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(30, 1, 8, 8, generator=gen(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 10  # clean-misclassified points are not attacked
    return model, x, y


def _ours(cls, norm, model, x, y, seed, **kw):
    atk = with_norm(cls(cls.Params(**kw)), norm, "test")
    return atk(LogitsObjective(model, y, 10), x, eps=EPS[norm], generator=gen(seed))


def _theirs(cls, norm, model, x, y, seed, **kw):
    with torch.random.fork_rng():
        return cls(model, norm=PYNORM[norm], eps=EPS[norm], seed=seed, device="cpu", **kw).perturb(x.clone(), y.clone())


CASES = [("l2", False), ("l1", False), ("l1", True)]


@pytest.mark.parametrize("norm,largereps", CASES)
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_equals_the_original_per_sample(mlp, norm, largereps, loss):
    model, x, y = mlp
    cls = APGDCE if loss == "ce" else APGDDLR
    kw = dict(steps=12, restarts=2, use_largereps=largereps)
    theirs = _theirs(pyaa.APGDAttack, norm, model, x, y, 3, n_iter=12, n_restarts=2, loss=loss, use_largereps=largereps)
    full = _ours(cls, norm, model, x, y, 3, early_stop=False, **kw)
    assert torch.equal(full, theirs)  # the same iterates, to the bit
    fast = _ours(cls, norm, model, x, y, 3, early_stop=True, **kw)
    ok = correct(model, fast, y)
    assert torch.equal(ok, correct(model, theirs, y))
    assert 0 < ok.sum() < correct(model, x, y).sum()  # the attack fools some points and not all
    assert (lp_norms(fast - x, norm) <= EPS[norm] * (1 + 1e-5)).all() and fast.min() >= 0 and fast.max() <= 1


@pytest.mark.parametrize("norm,largereps", CASES)
def test_apgd_t_equals_the_original_per_sample(mlp, norm, largereps):
    model, x, y = mlp
    kw = dict(steps=10, n_target_classes=3, use_largereps=largereps)
    theirs = _theirs(pyaa.APGDAttack_targeted, norm, model, x, y, 1, n_iter=10, n_target_classes=3,
                     use_largereps=largereps)
    assert torch.equal(_ours(APGDT, norm, model, x, y, 1, early_stop=False, **kw), theirs)
    fast = _ours(APGDT, norm, model, x, y, 1, early_stop=True, **kw)
    assert torch.equal(correct(model, fast, y), correct(model, theirs, y))


def _projection_f64(x, y, eps):
    """The projection of ``x + y`` onto {z: ||z - x||_1 <= eps, 0 <= z <= 1} from its optimality conditions:
    ``z_i - x_i = sign(y_i) clip(|y_i| - a, 0, cap_i)`` (``cap_i`` the room to the box in y's direction), with
    the smallest ``a >= 0`` whose L1 norm is <= eps (bisection in float64). Returns the correction z - x - y."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    cap = torch.where(y > 0, 1 - x, x)

    def delta(a):
        return y.sign() * torch.clamp(y.abs() - a, min=0).minimum(cap)

    lo, hi = torch.zeros(len(x), 1, dtype=torch.float64), y.abs().amax(1, keepdim=True)
    inside = delta(lo).abs().sum(1) <= eps
    for _ in range(200):
        mid = (lo + hi) / 2
        big = delta(mid).abs().sum(1, keepdim=True) > eps
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    a = torch.where(inside.unsqueeze(1), torch.zeros_like(hi), hi)
    return delta(a) - y


def test_l1_projection_hand_derived_case():
    # x + y = (1.4, 0.7, 0.4): the box caps the first coordinate at +0.5, and the soft threshold a = 0.2
    # then leaves (0.5, 0, 0), of L1 norm exactly eps = 0.5 (hand-derived)
    x = torch.full((1, 3), 0.5)
    y = torch.tensor([[0.9, 0.2, -0.1]])
    d = l1_projection(x, y, 0.5)
    assert torch.allclose(y + d, torch.tensor([[0.5, 0.0, 0.0]]), atol=1e-6)
    # inside the ball and the box: nothing moves; inside the ball only: the box projection
    assert torch.equal(l1_projection(x, torch.tensor([[0.1, -0.1, 0.0]]), 0.5), torch.zeros(1, 3))
    assert torch.allclose(l1_projection(x, torch.tensor([[0.7, 0.0, 0.0]]), 1.0), torch.tensor([[-0.2, 0.0, 0.0]]))


def test_l1_projection_equals_the_optimality_conditions_and_the_original():
    g = gen(7)
    x = torch.rand(200, 1, 4, 4, generator=g)
    y = torch.randn(200, 1, 4, 4, generator=g) * torch.rand(200, 1, 1, 1, generator=g)
    for eps in (0.5, 2.0, 6.0):
        d = l1_projection(x, y, eps)
        z = x + y + d
        assert (z >= -1e-6).all() and (z <= 1 + 1e-6).all()
        assert (lp_norms(y + d, "l1") <= eps + 1e-4).all()
        assert torch.equal(d, pyaa.L1_projection(x, y, eps))
        # the exact projection, except where the original's bisection ends in the first segment of the
        # breakpoints (it then divides by the next segment's slope): a known quirk, kept
        exact = _projection_f64(x, y, eps).view_as(d).float()
        close = (d - exact).flatten(1).abs().amax(1) < 1e-5
        assert close.float().mean() > 0.9


def test_largereps_schedule_is_the_originals():
    assert largereps_schedule(1.0, 100) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    assert largereps_schedule(2.0, 10) == [(6.0, 3), (4.0, 3), (2.0, 4)]


def test_norm_binding_and_use_largereps_checks():
    for cls in (APGDCE, APGDDLR, APGDT):
        assert cls.norms == ("linf", "l2", "l1")
    with pytest.raises(ConfigError, match="use_largereps"):
        with_norm(APGDCE(APGDCE.Params(use_largereps=True)), "l2", "suite.apgd")
    with pytest.raises(ConfigError, match="stack_targets"):
        APGDT(APGDT.Params(stack_targets=True, use_largereps=True))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_apgd_t_stacked_targets_equal_the_sequential_cascade_in_l2_and_l1(mlp, norm):
    from natbench.attacks import apgd as apgd_mod

    model, x, y = mlp
    steps, ranks = 10, range(2, 6)
    stacked = _ours(APGDT, norm, model, x, y, 0, steps=steps, n_target_classes=4, stack_targets=True)
    with torch.no_grad():
        clean = model(x)
    robust = clean.argmax(1) == y
    ranking = clean.sort(dim=1)[1]
    idx = robust.nonzero().squeeze(1)
    g = gen(0)
    starts = [apgd_mod._draw_start(x[idx], EPS[norm], g, norm) for _ in ranks]
    for j, k in enumerate(ranks):  # the sequential cascade from the stacked batch's starts (no early stop)
        pos = robust[idx].nonzero().squeeze(1)
        _, acc, _, _ = apgd_mod.apgd_single_run(model, x[idx[pos]], y[idx[pos]], None, eps=EPS[norm], n_iter=steps,
                                                y_target=ranking[idx[pos], -k], start=starts[j][pos], norm=norm)
        robust[idx[pos[~acc]]] = False
    assert torch.equal(correct(model, stacked, y), robust)
    assert 0 < robust.sum() < (clean.argmax(1) == y).sum()
    assert (lp_norms(stacked - x, norm) <= EPS[norm] * (1 + 1e-5)).all()
