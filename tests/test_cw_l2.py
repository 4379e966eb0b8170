"""CW-L2 (natbench.attacks.cw_l2): one search step with c fixed is torchattacks.CW per sample; the binary
search over c reaches the analytic minimal L2 distance of a linear model; a point's result does not depend
on its batch."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from natbench.attacks._base import lp_norms, with_norm
from natbench.attacks.cw_l2 import CWL2
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError
from natbench.registry import get_registry

from test_fmn import analytic, linear_case

torchattacks = pytest.importorskip("torchattacks")


class Counted(nn.Module):
    """A small MLP whose logits are shifted by +100. torchattacks.CW takes max over ``(1 - onehot) * z``,
    which is 0, not the best other logit, when every other logit is negative (the authors mask with
    -10000); with all logits positive both are the same function. Counts its forward calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x) + 100.0


def cw(**params) -> CWL2:
    return with_norm(CWL2(CWL2.Params(**params)), "l2", "test")


def test_one_search_step_with_c_fixed_is_torchattacks_cw_per_sample():
    model = Counted().eval()
    x = 0.1 + 0.8 * torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # away from 0/1: see below
    with torch.no_grad():
        y = model(x).argmax(1)
    steps, outcomes = 60, set()
    for c in (1.0, 10.0):
        model.calls = 0
        ref = torchattacks.CW(model, c=c, kappa=0, steps=steps, lr=0.01)(x, y)
        assert model.calls == steps  # torchattacks' batch-level early stop did not fire: all steps ran
        atk = cw(steps=steps, binary_search_steps=1, initial_const=c, abort_early=False)
        out = atk(LogitsObjective(model, y, 4), x, eps=1e6)
        ok = lp_norms(ref - x, "l2") > 0  # torchattacks returns x where no step was misclassified
        outcomes |= set(ok.tolist())
        assert torch.equal(atk.last_norms.isfinite(), ok)
        # the authors' start atanh((2x - 1) * 0.999999) vs torchattacks' atanh(2x - 1): ~1e-6 apart
        assert torch.allclose(out, ref, atol=1e-5)
        assert torch.allclose(atk.last_norms[ok], lp_norms(ref - x, "l2")[ok], atol=1e-5)
    assert outcomes == {True, False}  # points fooled and points not fooled were compared


def test_binary_search_reaches_the_analytic_l2_distance_of_a_linear_model():
    model, x, y = linear_case(n=6)
    true = analytic(model, x, y, "l2")
    atk = cw(steps=200)  # 9 search steps from c = 1e-3, as the authors
    atk(LogitsObjective(model, y, 3), x, eps=10.0)
    got = atk.last_norms
    assert (got >= true - 1e-6).all()
    assert torch.allclose(got, true, rtol=0.02), (got, true)
    few = cw(steps=200, binary_search_steps=2)  # c = 1e-3 then 1e-2: too small to cross the boundary
    few(LogitsObjective(model, y, 3), x, eps=10.0)
    assert torch.isinf(few.last_norms).all()


def test_a_points_result_does_not_depend_on_its_batch():
    model = Counted().eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = cw(steps=50, binary_search_steps=3, initial_const=0.1)  # abort_early on, per sample
    batch = atk(LogitsObjective(model, y, 4), x, eps=1e6)
    norms = atk.last_norms.clone()
    for i in range(len(x)):
        one = atk(LogitsObjective(model, y[i:i + 1], 4), x[i:i + 1], eps=1e6)
        assert torch.allclose(one, batch[i:i + 1], atol=1e-6) and torch.allclose(atk.last_norms, norms[i:i + 1])


def test_params_norms_and_registration():
    assert CWL2.norms == ("l2",) and CWL2.minimum_norm and CWL2.objective_kind == "logits"
    assert dataclasses.asdict(CWL2.Params()) == {"steps": 1000, "binary_search_steps": 9, "initial_const": 1e-3,
                                                 "lr": 1e-2, "kappa": 0.0, "abort_early": True, "eps_grid": None}
    assert get_registry().load("attacks", "cw-l2") is CWL2
    with pytest.raises(ConfigError, match="l2"):
        with_norm(CWL2(), "linf", "suite.cw-l2")
    for bad in ({"steps": 0}, {"binary_search_steps": 0}, {"initial_const": 0.0}, {"lr": -1.0}, {"kappa": -1.0}):
        with pytest.raises(ConfigError):
            CWL2(CWL2.Params(**bad))
