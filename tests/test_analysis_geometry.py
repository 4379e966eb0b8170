"""Head geometry (NAT Eqs. 10-13) on a hand-built linear head whose distances are known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from natbench.analysis import geometry as G
from natbench.analysis import plots

# three classes, orthogonal weight vectors of norms 2, 3, 1; biases 1, 0, -1
W = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
B = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
# two samples of class 0, one of class 1, none of class 2 (features = the head's input)
H = torch.tensor([[1.0, 1.0, 0.0], [3.0, -1.0, 2.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 0, 1])


class LinearNet(nn.Module):
    """features = flattened input; ``fc`` = the hand-built head."""

    def __init__(self, w=W, b=B):
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_weight_distances_eq11():
    s13, s5, s10 = math.sqrt(13), math.sqrt(5), math.sqrt(10)
    want = torch.tensor([[0, s13, s5], [s13, 0, s10], [s5, s10, 0]], dtype=torch.float64)
    assert torch.allclose(G.weight_distances(W), want, atol=1e-12)


def test_shortest_distances_eq12_orthogonal_weights():
    # gamma . d_i = -||w_i||, so gamma - (gamma . d_i) d_i = w_j: D[i, j] = ||w_j||
    raw = G.shortest_boundary_distances(W, "none")
    assert torch.allclose(raw, torch.tensor([[0, 3, 1], [2, 0, 1], [2, 3, 0]], dtype=torch.float64))
    assert torch.allclose(G.shortest_boundary_distances(W, "min"),
                          torch.tensor([[0, 2, 1], [2, 0, 1], [1, 1, 0]], dtype=torch.float64))
    assert torch.allclose(G.shortest_boundary_distances(W, "mean"),
                          torch.tensor([[0, 2.5, 1.5], [2.5, 0, 2], [1.5, 2, 0]], dtype=torch.float64))
    sym = G.shortest_boundary_distances(W)
    assert torch.equal(sym, sym.T)


def test_shortest_distances_eq12_at_45_degrees_and_parallel():
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    raw = G.shortest_boundary_distances(w, "none")
    # ||w_j|| sin 45: D[0,1] = sqrt(2)/sqrt(2) = 1, D[1,0] = 1/sqrt(2)
    assert raw[0, 1].item() == pytest.approx(1.0) and raw[1, 0].item() == pytest.approx(1 / math.sqrt(2))
    parallel = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    assert G.shortest_boundary_distances(parallel, "none").abs().max().item() == pytest.approx(0.0, abs=1e-12)


def test_eq13_as_printed_differs_from_eq12():
    # orthogonal weights: sqrt(4 ||w_i||^2 + ||w_j||^2)
    out = G.eq13_as_printed(W)
    assert out[0, 1].item() == pytest.approx(5.0) and out[1, 0].item() == pytest.approx(math.sqrt(40))
    assert out[2, 0].item() == pytest.approx(math.sqrt(4 + 4))


def test_signed_distances_eq10_without_abs():
    per = G.sample_boundary_distances(W, B, H)
    want = torch.tensor([[1.5, 1.0, -1.0], [3.5, -1.0, 1.0], [0.5, 2.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(per, want)
    m = G.signed_boundary_distances(W, B, H, Y, 3)
    assert torch.allclose(m[0], torch.tensor([2.5, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(m[1], torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64))
    assert torch.isnan(m[2]).all()  # no sample of class 2


def test_signed_distances_pairwise():
    m = G.signed_boundary_distances(W, B, H, Y, 3, kind="pairwise")
    s13, s5, s10 = math.sqrt(13), math.sqrt(5), math.sqrt(10)
    # class 0: logits (3, 3, -1) and (7, -3, 1): margins vs 1: 0 and 10; vs 2: 4 and 6
    assert math.isnan(m[0, 0]) and m[0, 1].item() == pytest.approx(5 / s13) and m[0, 2].item() == pytest.approx(5 / s5)
    # class 1: logits (1, 6, -1): vs 0: 5, vs 2: 7
    assert m[1, 0].item() == pytest.approx(5 / s13) and m[1, 2].item() == pytest.approx(7 / s10)
    with pytest.raises(ValueError, match="labels"):
        G.sample_boundary_distances(W, B, H, None, kind="pairwise")
    with pytest.raises(ValueError, match="kind"):
        G.sample_boundary_distances(W, B, H, Y, kind="abs")


def test_head_and_penultimate_of_a_model():
    model = LinearNet().double()
    w, b = G.head_weights(model)
    assert torch.equal(w, W) and torch.equal(b, B)
    h, z = G.penultimate(model, H)
    assert torch.equal(h, H) and torch.allclose(z, H @ W.T + B)


def test_penultimate_of_natbench_models_is_the_heads_input():
    from natbench.models import build, classifier
    from natbench.registry import get_registry
    from natbench.resolve import resolve

    spec = resolve(get_registry(), "digits", "vanilla").spec
    torch.manual_seed(0)
    model = build(spec.model).eval()
    x = torch.rand(4, 1, 8, 8)
    h, z = G.penultimate(model, x)
    with torch.no_grad():
        want = model[1].features(model[0](x))
    assert h.shape == (4, 4 * spec.model.width) and torch.allclose(h, want)
    assert torch.allclose(z, classifier(model)(h))

    class ReIDLike(nn.Module):  # a re-id model keeps its identity classifier at net.classifier
        def __init__(self):
            super().__init__()
            self.net = nn.Module()
            self.net.classifier = nn.Linear(3, 5)

        def forward(self, x):
            return self.net.classifier(x)

    assert G.linear_head(ReIDLike()).out_features == 5
    with pytest.raises(TypeError):
        G.linear_head(nn.Sequential(nn.ReLU()))


def test_matrix_and_bar_plots(tmp_path):
    mats = {"a": G.weight_distances(W).numpy(), "b": 2 * G.weight_distances(W).numpy()}
    p = plots.matrix_plot(mats, tmp_path / "m.png", "title", "distance")
    signed = {"a": G.signed_boundary_distances(W, B, H, Y, 3).numpy()}
    q = plots.matrix_plot(signed, tmp_path / "s.png", "t", "signed", diverging=True)
    r = plots.signed_distance_plot(signed, tmp_path / "r.png", row=0)
    for path in (p, q, r):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.png", "r.png", "s.png"]  # no temporary file left
    assert np.isfinite(mats["a"]).all()
