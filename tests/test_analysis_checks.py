"""Sparsity measures and evaluation sanity checks against hand-derived values."""
from __future__ import annotations

import math

import pytest
import torch

from natbench.analysis import sparsity
from natbench.checks import AttackIntegrityError, assert_in_ball, suite_checks
from natbench.compose import Composite, plan
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.tasks.classification import ClassificationTask


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


def test_assert_in_ball():
    x = torch.rand(2, 1, 3, 3)
    assert_in_ball(x, (x + 0.1).clamp(0, 1), 0.1, "ok")
    with pytest.raises(AttackIntegrityError, match="exceeds eps"):
        assert_in_ball(x, (x + 0.2).clamp(0, 1), 0.1, "too far")
    with pytest.raises(AttackIntegrityError, match=r"\[0, 1\]"):
        assert_in_ball(x, x + 0.05 + (1 - x), 0.5 + 1, "range")


def _flags(n_correct: int, n: int = 200, offset: int = 0) -> torch.Tensor:
    f = torch.zeros(n, dtype=torch.bool)
    f[offset: offset + n_correct] = True
    return f


def test_weaker_is_a_paired_sign_test():
    from natbench.checks import weaker

    a = _flags(100)
    assert not weaker(a, a)[0]
    assert not weaker(_flags(100), _flags(100, offset=3))[0]  # 3 vs 3 discordant: noise
    assert not weaker(_flags(100), _flags(103))[0]  # 0 vs 3: stronger is *stronger*, fine
    flagged, detail = weaker(_flags(120), _flags(100))  # 20 vs 0 discordant: 20 > 2*sqrt(20)
    assert flagged and detail == "20 vs 0 discordant samples"
    assert not weaker(_flags(104), _flags(100))[0]  # 4 vs 0: 4 = 2*sqrt(4), not above


def test_suite_checks_flag_masking_symptoms():
    steps = {"pgd-10": 10, "pgd-20": 20}
    healthy = {"clean": _flags(180), "fgsm": _flags(120), "pgd-10": _flags(100), "pgd-20": _flags(98)}
    assert all(c.passed for c in suite_checks(healthy, steps))
    masked = {"clean": _flags(180), "fgsm": _flags(80), "pgd-10": _flags(100), "pgd-20": _flags(130)}
    failed = {c.name for c in suite_checks(masked, steps) if not c.passed}
    assert failed == {"iterative_beats_single_step", "more_steps_not_weaker"}
    above = {c.name for c in suite_checks({"clean": _flags(100), "fgsm": _flags(140)}, {}) if not c.passed}
    assert above == {"clean_is_upper_bound"}


def test_evaluate_rejects_an_attack_that_leaves_the_ball():
    r = resolve(get_registry(), "digits", "vanilla", suite="smoke")
    task = ClassificationTask(r.spec)
    model = task.build_model()
    loader = task.loaders(64, torch.Generator().manual_seed(0), 64)[2]

    class Cheat:
        name = "cheat"

        def __call__(self, objective, x, *, eps, generator=None):
            return (x + 2 * eps).clamp(0, 1)

    with pytest.raises(AttackIntegrityError):
        task.evaluate(model, loader, Cheat())


@pytest.mark.gpu
def test_training_step_runs_on_cuda():
    from natbench.runner import make_optimizer, train_step

    reg = get_registry()
    r = resolve(reg, "digits", "trades", suite="smoke")
    task = ClassificationTask(r.spec)
    model = task.build_model().cuda()
    comp = Composite.build(plan("trades", reg, task.capabilities), r.params)
    batch = next(iter(task.loaders(64, torch.Generator().manual_seed(0))[0])).to("cuda")
    out = train_step(comp, model, batch, task, make_optimizer(r.profile, model), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
