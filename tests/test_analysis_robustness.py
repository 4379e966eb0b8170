"""Robust accuracy against eps on a hand-built linear head, where the smallest L-inf perturbation that
flips each sample is known in closed form, and the curve's sanity checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from natbench.analysis import plots
from natbench.analysis.robustness import EpsCurve, accuracy_vs_eps, default_eps_list, eps_curve_checks
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.tasks.classification import ClassificationTask, TensorLoader


class Centered(nn.Module):
    """z0 = x1 + x2 - 1, z1 = -(x1 + x2 - 1): the margin z0 - z1 = 2 (x1 + x2 - 1)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x):
        return self.fc(x)


def test_eps_curve_of_a_linear_head_is_closed_form():
    # class-0 samples with x1 + x2 - 1 = m: PGD moves both coordinates by -eps (the sign of the CE
    # gradient p1 (w1 - w0) never changes), so the margin becomes 2 (m - 2 eps): a sample survives
    # eps exactly when m > 2 eps
    m = np.array([0.1, 0.2, 0.3, 0.4, 0.6])
    x = torch.tensor(np.stack([0.5 + m / 2, 0.5 + m / 2], 1), dtype=torch.float32)
    y = torch.zeros(5, dtype=torch.long)
    task = ClassificationTask(resolve(get_registry(), "digits", "vanilla").spec)
    eps = [0.0, 0.025, 0.075, 0.125, 0.175, 0.25, 0.35]
    curve = accuracy_vs_eps(task, Centered(), TensorLoader(x, y, 2), eps, steps=20)
    want = [float((m > 2 * e).mean()) for e in eps]
    assert want == [1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    assert curve.eps == eps and curve.accuracy == pytest.approx(want)
    assert [f.tolist() for f in curve.flags][2] == [False, True, True, True, True]
    checks = {c.name: c for c in eps_curve_checks(curve)}
    assert checks["eps_curve_non_increasing"].passed and checks["eps_curve_reaches_zero"].passed
    assert "PGD-20" in curve.attack


def test_eps_curve_checks_flag_a_non_monotone_curve():
    n = 40
    ok = np.ones(n, bool)
    half = np.arange(n) < 20
    none = np.zeros(n, bool)
    # eps 0.2 leaves 20 correct, eps 0.3 leaves all 40: a larger budget significantly weaker
    bad = EpsCurve([0.0, 0.2, 0.3], [1.0, 0.5, 1.0], [ok, half, ok])
    checks = {c.name: c for c in eps_curve_checks(bad)}
    assert not checks["eps_curve_non_increasing"].passed and "eps 0.3 weaker than eps 0.2" in checks["eps_curve_non_increasing"].detail
    assert not checks["eps_curve_reaches_zero"].passed and "100.00%" in checks["eps_curve_reaches_zero"].detail
    # a few discordant samples either way are random-start noise, not a failure
    noisy = half.copy()
    noisy[20] = True
    fine = EpsCurve([0.0, 0.2, 0.3], [1.0, 0.5, 0.525], [ok, half, noisy])
    assert {c.name: c.passed for c in eps_curve_checks(fine)}["eps_curve_non_increasing"]
    zero = EpsCurve([0.0, 1.0], [1.0, 0.0], [ok, none])
    assert all(c.passed for c in eps_curve_checks(zero))


def test_default_eps_list():
    assert default_eps_list(0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8])
    assert default_eps_list(0.5, (0, 1, 2, 4)) == [0.0, 0.5, 1.0]  # capped at 1, no duplicates


def test_eps_curve_plot(tmp_path):
    c = EpsCurve([0.0, 0.1, 0.2], [0.9, 0.5, 0.1])
    p = plots.eps_curve_plot({"a": c, "b": EpsCurve([0.0, 0.1, 0.2], [0.95, 0.3, 0.0])}, tmp_path / "e.png", 0.1, "PGD-20")
    assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000
