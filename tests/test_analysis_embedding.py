"""2-D embedding of features (NAT Fig. 5): UMAP/t-SNE dispatch, and the separation numbers in closed form."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from natbench.analysis import embedding as E
from natbench.analysis import plots


def test_separation_closed_form():
    # class 0 at (0,0), (2,0); class 1 at (0,10), (2,10): same-class distance 2, centroid distance 10
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 10.0], [2.0, 10.0]])
    y = np.array([0, 0, 1, 1])
    s = E.separation(x, y)
    assert s["intra_inter"] == pytest.approx(0.2)
    # every point: a = 2, b = mean(10, sqrt(104)); silhouette 1 - a / b
    assert s["silhouette"] == pytest.approx(1 - 2 / ((10 + math.sqrt(104)) / 2))
    assert math.isnan(E.separation(x, np.zeros(4))["silhouette"])


def test_tsne_separates_far_apart_classes():
    rng = np.random.default_rng(0)
    centres = 10 * np.eye(5)[:3]
    x = np.concatenate([c + 1e-3 * rng.standard_normal((20, 5)) for c in centres])
    y = np.repeat([0, 1, 2], 20)
    emb, method = E.embed_2d(x, seed=0, method="tsne")
    assert method == "t-SNE" and emb.shape == (60, 2)
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).all()  # every point's nearest neighbour in 2-D is of its class
    sep = E.separation(x, y)
    assert sep["silhouette"] > 0.999 and sep["intra_inter"] < 1e-3


def test_auto_uses_umap_only_when_importable(monkeypatch):
    x = np.random.default_rng(1).standard_normal((12, 4))
    monkeypatch.setattr(E, "umap_available", lambda: False)
    assert E.embed_2d(x, method="auto")[1] == "t-SNE"

    class FakeUMAP:
        def __init__(self, n_components, random_state, n_neighbors):
            self.n = n_components

        def fit_transform(self, data):
            return data[:, : self.n]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(E, "umap_available", lambda: True)
    emb, method = E.embed_2d(x, method="auto")
    assert method == "UMAP" and np.array_equal(emb, x[:, :2])
    with pytest.raises(ValueError, match="at least 3"):
        E.embed_2d(x[:2])


def test_embedding_plot(tmp_path):
    emb = np.random.default_rng(2).standard_normal((30, 2))
    y = np.repeat([0, 1, 2], 10)
    p = plots.embedding_plot({"a": (emb, y, {"silhouette": 0.5}), "b": (emb, y, {})}, tmp_path / "e.png", "t-SNE")
    assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000
