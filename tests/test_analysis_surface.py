"""Loss surface (NuAT Fig. 1) of a hand-built linear head, where CE at x + a g + b r is closed form."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from natbench.analysis import plots
from natbench.analysis.surface import loss_surface, orthogonal_sign, surface_summary


def test_orthogonal_sign_is_a_sign_vector_orthogonal_to_g():
    g = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 0.0, 1.0, 0.0])  # 6 non-zero, 2 zero
    for seed in range(5):
        r = orthogonal_sign(g, torch.Generator().manual_seed(seed))
        assert float((r * g).sum()) == 0.0
        assert set(r.tolist()) <= {-1.0, 1.0} and r.shape == g.shape
    odd = torch.tensor([[1.0, -1.0, 1.0]])  # an odd count: one coordinate left out
    r = orthogonal_sign(odd, torch.Generator().manual_seed(0))
    assert float((r * odd).sum()) == 0.0 and int((r == 0).sum()) == 1 and r.shape == odd.shape
    a = orthogonal_sign(g, torch.Generator().manual_seed(1))
    b = orthogonal_sign(g, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


class Linear(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype)
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_loss_surface_of_a_linear_head_is_closed_form():
    w = torch.tensor([[1.0, 2.0, -1.0, 0.0], [-1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)  # x4 is ignored: grad 0
    b = torch.tensor([0.3, -0.3], dtype=torch.float64)
    model = Linear(w, b).train()
    x = torch.tensor([[0.2, 0.4, 0.6, 0.8]], dtype=torch.float64)
    eps = 0.1
    s = loss_surface(model, x, 0, span=2 * eps, n=9, generator=torch.Generator().manual_seed(0))
    assert model.training  # mode restored
    # grad of CE for class 0 is p1 (w1 - w0): g = sign(w1 - w0) = (-1, -1, 1, 0)
    assert s.g.tolist() == [-1.0, -1.0, 1.0, 0.0]
    assert float((s.g * s.r).sum()) == 0.0
    dw = (w[0] - w[1]).numpy()
    m0 = float((w[0] - w[1]) @ x[0] + b[0] - b[1])
    sg, sr = float(dw @ s.g.numpy()), float(dw @ s.r.numpy())
    aa, bb = np.meshgrid(s.a, s.b, indexing="ij")
    want = np.log1p(np.exp(-(m0 + aa * sg + bb * sr)))  # CE of a binary softmax = softplus(-margin)
    np.testing.assert_allclose(s.loss, want, rtol=1e-10, atol=1e-12)
    assert s.a[0] == pytest.approx(-0.2) and s.a[-1] == pytest.approx(0.2) and s.loss.shape == (9, 9)
    summ = surface_summary(s, eps)
    i0 = 4  # a = 0, b = 0
    assert summ["loss_at_x"] == pytest.approx(want[i0, i0])
    # along +g the loss rises monotonically: its max within eps is at a = eps (index 6)
    assert summ["max_along_g"] == pytest.approx(want[6, i0]) and summ["rise_along_g"] == pytest.approx(want[6, i0] - want[i0, i0])
    assert summ["rise_along_g"] > 0 and summ["max_along_g"] >= summ["max_along_r"]
    ball = np.abs(aa) + np.abs(bb) <= eps + 1e-12  # the L-inf eps-ball in the (a, b) plane
    assert summ["max_in_ball"] == pytest.approx(want[ball].max())


def test_surface_plot(tmp_path):
    model = Linear(torch.tensor([[1.0, -1.0], [0.0, 1.0]]), torch.zeros(2))
    s = loss_surface(model, torch.tensor([0.5, 0.5]), 1, span=0.4, n=7)
    p = plots.surface_plot({"m": (s, surface_summary(s, 0.2)), "m2": (s, surface_summary(s, 0.2))}, tmp_path / "s.png", 0.2)
    assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000
