"""natbench.api as a user calls it: ``natbench.evaluate``, ``natbench.train``, ``natbench.leaderboard``."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import natbench


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):
        return self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


class Quantized(Tiny):
    """Rounds its input to 2 grey levels: the input gradient is zero (gradient masking)."""

    def forward(self, x):
        return super().forward(torch.round(x))


def _model(cls=Tiny, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def _first(n: int):
    from natbench.registry import get_registry
    from natbench.resolve import resolve
    from natbench.tasks.classification import ClassificationTask

    r = resolve(get_registry(), "digits", "vanilla")
    b = next(iter(ClassificationTask(r.spec).loaders(64, torch.Generator().manual_seed(0), 1000)[2]))
    return b.x[:n], b.y[:n]


def test_import_is_light():
    code = "import sys, natbench; assert callable(natbench.evaluate); print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_evaluate_without_store(tmp_path):
    m = _model()
    res = natbench.evaluate(m, task="digits", suite="smoke", n=48, store=None, root=tmp_path / "runs")
    assert res.run_id is None and not (tmp_path / "runs" / "natbench.sqlite").exists()
    x, y = _first(48)
    with torch.no_grad():
        want = (m.eval()(x).argmax(1) == y).numpy()
    assert np.array_equal(res.per_sample["clean"], want)
    assert res.clean == pytest.approx(want.mean())
    assert set(res.robust) == {"fgsm", "pgd-5"}
    assert res.robust["pgd-5"] == pytest.approx(res.per_sample["pgd-5"].mean())
    worst = np.logical_and.reduce([res.per_sample[k] for k in res.per_sample]).mean()
    assert res.worst_case == pytest.approx(worst)
    assert {c["name"] for c in res.checks} >= {"deterministic", "gradient_nonzero"}
    assert res.provenance["source"] == "python" and res.provenance["params"] == sum(p.numel() for p in m.parameters())


def test_evaluate_records_resumes_and_leaderboard(tmp_path):
    root = tmp_path / "runs"
    torch.save(_model(seed=3).state_dict(), tmp_path / "w.pt")
    kw = dict(task="digits", n=48, root=root, weights=tmp_path / "w.pt", name="tiny")
    a = natbench.evaluate(_model(), suite="smoke", **kw)
    b = natbench.evaluate(_model(seed=5), suite="smoke", **kw)  # same weights loaded: the same run, nothing evaluated
    assert a.run_id == b.run_id and a.run_id.startswith("digits-ext-tiny-")
    assert all(np.array_equal(a.per_sample[k], b.per_sample[k]) for k in a.per_sample)
    c = natbench.evaluate(_model(), suite="digits", **kw)  # adds pgd-10/20/50, cw-inf to the run
    assert c.run_id == a.run_id and {"fgsm", "pgd-5", "pgd-50", "cw-inf"} <= set(c.robust)
    df = natbench.leaderboard("digits", root=root)
    assert list(df["defense"]) == ["tiny"]
    assert df["clean"].item() == pytest.approx(100 * a.clean, abs=0.01)
    from natbench import leaderboard as lb  # the module is still the module

    assert callable(lb.table)


def test_flagged_model_is_escalated(tmp_path):
    res = natbench.evaluate(_model(Quantized), task="digits", suite="smoke", n=12, store=None, root=tmp_path)
    assert "gradient_nonzero" in res.flags
    assert "escalated-square" in res.robust  # the gradient-free attack the failed check calls for


def test_bad_model_is_a_config_error(tmp_path):
    from natbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"must return logits of shape \(4, 10\)"):
        natbench.evaluate(nn.Flatten(), task="digits", suite="smoke", n=8, root=tmp_path)
    with pytest.raises(ConfigError, match="store="):
        natbench.evaluate(_model(), task="digits", store="elsewhere", root=tmp_path)
    assert not (tmp_path / "natbench.sqlite").exists()


@pytest.mark.slow
def test_train_then_leaderboard(tmp_path):
    from natbench.registry import get_registry
    from natbench.resolve import resolve

    root = tmp_path / "runs"
    run = natbench.train(task="digits", defense="vanilla", seed=0, profile="quick", suite="smoke", root=root)
    assert run.run_id == resolve(get_registry(), "digits", "vanilla", profile="quick", suite="smoke").run_id
    assert set(run.results) == {"best", "last"} and set(run.results["best"]) == {"clean", "fgsm", "pgd-5"}
    assert natbench.train(task="digits", defense="vanilla", seed=0, profile="quick", suite="smoke", root=root).run_id == run.run_id
    df = natbench.leaderboard("digits", root=root)
    best = df[(df["defense"] == "vanilla") & (df["checkpoint"] == "best")]
    assert best["clean"].item() == pytest.approx(100 * run.results["best"]["clean"], abs=0.01)
