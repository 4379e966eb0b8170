"""Output sparsity (NAT Fig. 3): entropy, Hoyer and off-label entropy by hand and in closed form, and what the analyses collect from a hand-built linear
model, clean and under FGSM (whose effect on a linear head is known exactly)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from natbench.analysis import plots, sparsity
from natbench.analysis.collect import LimitedLoader, collect
from natbench.attacks.fgsm import FGSM
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.tasks.classification import ClassificationTask, TensorLoader


def test_profile_closed_form():
    p1 = torch.tensor([0.25, 0.5, 0.25])  # true class 1
    logits = torch.stack([p1.log(), torch.tensor([0.0, 0.0, 0.0])])  # second sample uniform, true class 2
    y = torch.tensor([1, 2])
    out = sparsity.profile(logits, y)
    assert out["entropy"][0] == pytest.approx(1.5 * math.log(2))
    assert out["entropy"][1] == pytest.approx(math.log(3))
    assert out["nontarget_entropy"][0] == pytest.approx(math.log(2))  # (0.25, 0.25) renormalised
    assert out["nontarget_entropy"][1] == pytest.approx(math.log(2))
    h = (math.sqrt(3) - 1 / math.sqrt(0.375)) / (math.sqrt(3) - 1)  # |p|_1 = 1, |p|_2 = sqrt(0.375)
    assert out["hoyer"][0] == pytest.approx(h) and out["hoyer"][1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(out["sorted_mean"], [(0.5 + 1 / 3) / 2, (0.25 + 1 / 3) / 2, (0.25 + 1 / 3) / 2])
    assert out["accuracy"] == 0.5  # the uniform row's argmax is class 0
    assert out["entropy_mean"] == pytest.approx((1.5 * math.log(2) + math.log(3)) / 2)
    assert out["hoyer_mean"] == pytest.approx(h / 2)
    one_hot = sparsity.profile(torch.tensor([[0.0, 60.0, 0.0]]), torch.tensor([1]))
    assert one_hot["hoyer"][0] == pytest.approx(1.0) and one_hot["entropy"][0] == pytest.approx(0.0, abs=1e-20)
    np.testing.assert_allclose(one_hot["sorted_mean"], [1.0, 0.0, 0.0], atol=1e-20)
    # the existing summary() agrees with profile()
    s = sparsity.summary(logits, y)
    assert s["entropy"] == pytest.approx(out["entropy_mean"]) and s["hoyer"] == pytest.approx(out["hoyer_mean"])


class Linear2(nn.Module):
    """Two classes on 2-D inputs: z0 = x1 + 2 x2, z1 = 0."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x)


def _task():
    return ClassificationTask(resolve(get_registry(), "digits", "vanilla").spec)  # eps 0.2; no data is read


def test_collect_clean_and_fgsm_on_a_linear_head():
    x = torch.tensor([[0.5, 0.5], [0.4, 0.6], [0.7, 0.3], [0.6, 0.5], [0.5, 0.7]])
    y = torch.zeros(5, dtype=torch.long)
    task, model = _task(), Linear2()
    loader = TensorLoader(x, y, 2)
    out = collect(task, model, loader, FGSM())
    assert len(out) == 5 and torch.equal(out.y, y)
    assert torch.allclose(out.features, x)  # the head's input is the raw input
    z0 = x[:, 0] + 2 * x[:, 1]
    assert torch.allclose(out.logits[:, 0], z0) and torch.allclose(out.logits[:, 1], torch.zeros(5))
    # FGSM moves each coordinate by -eps (sign of p1 (w1 - w0)): z0 drops by eps * |w0 - w1|_1 = 0.2 * 3
    assert torch.allclose(out.adv_logits[:, 0], z0 - 0.6, atol=1e-6)
    assert torch.allclose(out.adv_features, x - 0.2, atol=1e-6)
    part = collect(task, model, loader, None, max_samples=3)
    assert len(part) == 3 and part.adv_logits is None
    assert len(list(LimitedLoader(loader, 3))) == 2 and sum(len(b) for b in LimitedLoader(loader, 3)) == 3


def test_collect_restores_the_mode():
    task, model = _task(), Linear2().train()
    collect(task, model, TensorLoader(torch.rand(3, 2), torch.zeros(3, dtype=torch.long), 3))
    assert model.training


def test_sparsity_plot(tmp_path):
    a = sparsity.profile(torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 1]))
    b = sparsity.profile(torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.9]]), torch.tensor([0, 1]))
    p = plots.sparsity_plot({"sparse": {"clean": a, "adv": b}, "flat": {"clean": b, "adv": None}}, tmp_path / "s.png", "PGD-20")
    assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000


def test_entropy_hoyer_hand_values():
    uniform = torch.full((1, 4), 0.25, dtype=torch.float64)
    onehot = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert sparsity.entropy(uniform).item() == pytest.approx(math.log(4))
    assert sparsity.entropy(onehot).item() == pytest.approx(0.0, abs=1e-12)
    assert sparsity.hoyer(uniform).item() == pytest.approx(0.0, abs=1e-12)
    assert sparsity.hoyer(onehot).item() == pytest.approx(1.0)
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)  # |p|1 = 1, |p|2 = sqrt(0.38)
    assert sparsity.hoyer(p).item() == pytest.approx((math.sqrt(3) - 1 / math.sqrt(0.38)) / (math.sqrt(3) - 1))


def test_nontarget_entropy_renormalises_off_label_mass():
    p = torch.tensor([[0.6, 0.2, 0.2, 0.0], [0.1, 0.9, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    out = sparsity.nontarget_entropy(p, y)
    assert out[0].item() == pytest.approx(math.log(2))  # {0.5, 0.5, 0}
    assert out[1].item() == pytest.approx(0.0, abs=1e-12)  # {1, 0, 0}
    s = sparsity.summary(torch.log(p.clamp_min(1e-300)), torch.tensor([0, 1]))
    assert set(s) == {"entropy", "nontarget_entropy", "hoyer"}
