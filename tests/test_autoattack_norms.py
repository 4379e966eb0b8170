"""AutoAttack in L2 and L1 (natbench.attacks.autoattack) against the authors' package (pyautoattack 0.2.0).

The cascade of the APGD components is compared per sample with ``pyautoattack.AutoAttack(norm="L2"/"L1")``
on a tiny MLP (8x8 inputs, 30 points, 10 iterations): L2 with the L-inf settings, L1 with the original's
L1 standard settings (APGD-CE with use_largereps and 5 restarts, APGD-T with use_largereps and 5 targets).
The full standard version (FAB-T, Square) is compared once those components implement the norm
(until then binding the norm is a ConfigError naming the component).
"""
from __future__ import annotations

import importlib
import logging

import pytest
import torch
from torch import nn

from natbench.attacks._base import with_norm
from natbench.attacks.autoattack import AutoAttack, AutoAttackRand
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError
from natbench.registry import get_registry

from helpers import correct, gen

pyaa = pytest.importorskip("pyautoattack")

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"l2": 0.5, "l1": 2.0}
PYNORM = {"l2": "L2", "l1": "L1"}
N_ITER = 10


def _has_norm(module: str, cls: str, norm: str) -> bool:
    try:
        return norm in getattr(importlib.import_module(module), cls).norms
    except (ImportError, AttributeError):
        return False


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(30, 1, 8, 8, generator=gen(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 10
    return model, x, y


def original(model, x, y, norm, seed, attacks, n_iter=N_ITER, n_queries=5000):
    """``pyautoattack.AutoAttack(version='standard')``'s settings for ``norm`` with ``n_iter`` iterations: the
    package's components rebuilt with ``n_iter`` (their schedules are fixed at construction), the
    standard version's settings applied again, then ``attacks`` run (version custom)."""
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    aa = pyaa.AutoAttack(model, norm=PYNORM[norm], eps=EPS[norm], seed=seed, device="cpu", version="custom",
                         attacks=list(attacks))
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    aa.apgd = APGDAttack(model, n_restarts=5, n_iter=n_iter, eps=EPS[norm], norm=PYNORM[norm], seed=seed, device="cpu")
    aa.apgd_targeted = APGDAttack_targeted(model, n_iter=n_iter, eps=EPS[norm], norm=PYNORM[norm], seed=seed,
                                           device="cpu")
    aa.fab.n_iter = n_iter
    aa.square.n_queries = n_queries
    aa._set_version("standard")  # the norm's standard settings (it also resets attacks_to_run)
    aa.square.n_queries = n_queries
    aa.attacks_to_run = list(attacks)
    with torch.random.fork_rng():
        adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    return adv


def ours(model, x, y, norm, seed, attacks, early_stop, **kw):
    aa = with_norm(AutoAttack(AutoAttack.Params(attacks=tuple(attacks), n_iter=N_ITER, early_stop=early_stop, **kw)),
                   norm, "test")
    return aa(LogitsObjective(model, y, 10), x, eps=EPS[norm], generator=gen(0))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_apgd_cascade_equals_the_original_package_per_sample(mlp, norm):
    model, x, y = mlp
    attacks = ("apgd-ce", "apgd-t")
    theirs = original(model, x, y, norm, 0, attacks)
    assert torch.equal(ours(model, x, y, norm, 0, attacks, early_stop=False), theirs)
    fast = ours(model, x, y, norm, 0, attacks, early_stop=True)
    ok = correct(model, fast, y)
    assert torch.equal(ok, correct(model, theirs, y))
    assert 0 < ok.sum() < correct(model, x, y).sum()


def test_l1_standard_settings_are_the_originals():
    aa = with_norm(AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t"))), "l1", "test")
    comps = dict(aa.components)
    ce, t = comps["apgd-ce"].params, comps["apgd-t"].params
    assert (ce.use_largereps, ce.restarts, ce.steps) == (True, 5, 100)
    assert (t.use_largereps, t.restarts, t.n_target_classes) == (True, 1, 5)
    for norm in ("linf", "l2"):  # L2 keeps L-inf's settings
        comps = dict(with_norm(AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t"))), norm, "t").components)
        assert (comps["apgd-ce"].params.restarts, comps["apgd-ce"].params.use_largereps) == (1, False)
        assert (comps["apgd-t"].params.n_target_classes, comps["apgd-t"].norm) == (9, norm)
    rand = dict(with_norm(AutoAttackRand(), "l1", "t").components)  # 'rand' keeps its settings in L1
    assert (rand["apgd-ce"].params.restarts, rand["apgd-ce"].params.use_largereps, rand["apgd-ce"].norm) == (1, False, "l1")


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_a_component_without_the_norm_is_a_config_error(norm):
    for module, cls, comp in (("natbench.attacks.fab", "FABT", "fab-t"), ("natbench.attacks.square", "Square", "square")):
        if _has_norm(module, cls, norm):
            continue
        with pytest.raises(ConfigError, match=f"component '{comp}'.*{norm}"):
            with_norm(AutoAttack(AutoAttack.Params(attacks=("apgd-ce", comp))), norm, "suite.aa")


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_standard_equals_the_original_package_per_sample(mlp, norm):
    if not (_has_norm("natbench.attacks.fab", "FABT", norm) and _has_norm("natbench.attacks.square", "Square", norm)):
        pytest.skip(f"FAB-T / Square do not implement {norm} yet")
    model, x, y = mlp
    x, y = x[:20], y[:20]
    attacks = ("apgd-ce", "apgd-t", "fab-t", "square")
    theirs = original(model, x, y, norm, 0, attacks, n_queries=100)
    mine = ours(model, x, y, norm, 0, attacks, early_stop=True, n_queries=100)
    assert torch.equal(correct(model, mine, y), correct(model, theirs, y))
    assert torch.equal(ours(model, x, y, norm, 0, attacks, early_stop=False, n_queries=100), theirs)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_autoattack_original_passes_the_norm(mlp, norm):
    model, x, y = mlp
    cls = get_registry().load("attacks", "autoattack-original")
    atk = with_norm(cls(), norm, "test")
    calls = []
    real = pyaa.AutoAttack

    class Spy(real):
        def __init__(self, *a, **kw):
            calls.append(kw["norm"])
            super().__init__(*a, **kw)
            self.attacks_to_run = ["apgd-ce"]  # keep the check cheap: the package's first component only
            self.apgd.n_iter, self.apgd.n_iter_orig = 3, 3

    import pyautoattack

    mp = pytest.MonkeyPatch()
    mp.setattr(pyautoattack, "AutoAttack", Spy)
    try:
        adv = atk(LogitsObjective(model, y[:6], 10), x[:6], eps=EPS[norm], generator=gen(0))
    finally:
        mp.undo()
    assert calls == [PYNORM[norm]]
    assert adv.shape == x[:6].shape
