"""natbench.attacks.malt: MALT's target ranking against hand-derived linear cases, its cascade against APGD-T."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from natbench.attacks.apgd import APGDT
from natbench.attacks.malt import MALT, malt_scores, malt_targets
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError


def linear(w: list[list[float]], b: list[float]) -> nn.Linear:
    """``z = W x + b`` on flat inputs: the model under which MALT's score is the exact boundary distance."""
    m = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
        m.bias.copy_(torch.tensor(b))
    return m.eval()


# W rows: class 0 (the label) 0; class 1 (4, 4, 4): gap 1, ||w1 - w0||_1 = 12; class 2 (0.5, 0, 0):
# gap 2, norm 0.5; class 3 (1, -1, 0): gap 3, norm 2. At x = 0 the logits are the biases (3, 2, 1, 0).
W = [[0, 0, 0], [4, 4, 4], [0.5, 0, 0], [1, -1, 0]]
B = [3.0, 2.0, 1.0, 0.0]


def test_scores_are_the_linear_models_linf_boundary_distances():
    model, x, y = linear(W, B), torch.zeros(1, 3), torch.tensor([0])
    s = malt_scores(model, x, y, n_tested=3)
    torch.testing.assert_close(s[0, 1:], torch.tensor([1 / 12, 2 / 0.5, 3 / 2]))
    assert s[0, 0] == float("inf")  # the label is never a target
    # the logits rank the targets 1, 2, 3; MALT ranks them by distance: 1 (1/12), 3 (1.5), 2 (4)
    assert malt_targets(model, x, y, 3, 3).tolist() == [[1, 3, 2]]


def test_a_step_of_the_score_along_the_sign_reaches_the_boundary_exactly():
    # the score is the smallest L-inf step to the y/j boundary of a linear model (box not binding)
    w, x, y = torch.tensor(W), torch.full((1, 3), 0.5), torch.tensor([0])
    model = linear(W, (torch.tensor(B) - w @ x[0]).tolist())  # logits (3, 2, 1, 0) at x = 0.5
    s = malt_scores(model, x, y, n_tested=3)
    torch.testing.assert_close(s[0, 1:], torch.tensor([1 / 12, 2 / 0.5, 3 / 2]))
    for j in (1, 2, 3):
        x_j = x + s[0, j] * torch.sign(w[j] - w[0])
        with torch.no_grad():
            z, z_short = model(x_j)[0], model(x + 0.99 * s[0, j] * torch.sign(w[j] - w[0]))[0]
        assert abs(float(z[j] - z[0])) < 1e-5
        assert float(z_short[0] - z_short[j]) > 0  # a shorter step keeps the label ahead


def test_ties_go_to_the_higher_logit():
    w = [[0, 0, 0], [2, 0, 0], [1, 0, 0], [0, 0, 0.5]]  # scores 1 / 2, 2 / 1, 3 / 0.5: no tie yet
    model, x, y = linear(w, [3.0, 2.0, 1.0, 2.5]), torch.zeros(1, 3), torch.tensor([0])
    # gaps 1, 2, 0.5 over norms 2, 1, 0.5 (logits 2, 1, 2.5): scores 0.5, 2, 1 -- now tie classes 1 and 3
    model.weight.data[3] = torch.tensor([0, 0, 1.0])  # class 3: gap 0.5, norm 1 -> 0.5, logit 2.5 > 2
    assert malt_targets(model, x, y, 3, 3).tolist() == [[3, 1, 2]]


def test_only_the_n_tested_highest_logits_are_scored():
    model, x, y = linear(W, B), torch.zeros(1, 3), torch.tensor([0])
    s = malt_scores(model, x, y, n_tested=2)  # classes 1, 2 (logits 2, 1); class 3 (logit 0) not scored
    assert s[0, 3] == float("inf") and torch.isfinite(s[0, 1:3]).all()
    assert malt_targets(model, x, y, 2, 2).tolist() == [[1, 2]]


def test_a_zero_gap_gradient_scores_zero_and_is_ranked_first_as_the_authors_code():
    w = [[1, 0, 0], [4, 4, 4], [1, 0, 0], [1, -1, 0]]  # class 2 has the label's gradient
    model, x, y = linear(w, B), torch.zeros(1, 3), torch.tensor([0])
    assert malt_scores(model, x, y, n_tested=3)[0, 2] == 0
    assert malt_targets(model, x, y, 1, 3).tolist() == [[2]]


def test_rows_are_ranked_independently_and_labels_other_than_the_top_logit():
    model = linear(W, B)
    x = torch.zeros(2, 3)
    y = torch.tensor([0, 1])  # row 1's label is class 1 (logit 2): the gaps are negative for class 0
    s = malt_scores(model, x, y, n_tested=3)
    torch.testing.assert_close(s[1], torch.tensor([-1 / 12, float("inf"), 1 / (3.5 + 4 + 4), 2 / (3 + 5 + 4)]))


def _equal_norm_model() -> nn.Module:
    """Linear, 10 classes, w_j = 3 e_j: every ||w_j - w_y||_1 is 6, so MALT ranks like the logits."""
    torch.manual_seed(0)
    w = torch.zeros(10, 64)
    w[torch.arange(10), torch.arange(10)] = 3.0
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        m[1].weight.copy_(w)
        m[1].bias.copy_(torch.randn(10) * 0.1)
    return m.eval()


@pytest.mark.parametrize("k", [3, 9])
def test_with_equal_gradient_norms_malt_is_apgd_t_exactly(k):
    model = _equal_norm_model()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(40, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    obj = LogitsObjective(model, y, 10)
    eps = 0.05
    malt = MALT(MALT.Params(steps=10, n_target_classes=k))(obj, x, eps=eps, generator=torch.Generator().manual_seed(1))
    apgdt = APGDT(APGDT.Params(steps=10, n_target_classes=k))(obj, x, eps=eps, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fooled = model(malt).argmax(1) != y
    assert 0 < int(fooled.sum()) < len(y)  # the check is not vacuous
    assert torch.equal(malt, apgdt)


def test_more_targets_fool_a_superset_and_the_result_stays_in_the_ball():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(60, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 10  # five clean-misclassified points: returned clean, counted fooled
    obj = LogitsObjective(model, y, 10)
    eps = 0.03
    fooled = {}
    for k in (1, 3, 9):
        adv = MALT(MALT.Params(steps=10, n_target_classes=k))(obj, x, eps=eps, generator=torch.Generator().manual_seed(4))
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert torch.equal(adv[:5], x[:5])
        with torch.no_grad():
            fooled[k] = model(adv).argmax(1) != y
    # the first target's run draws the same starts whatever k is, so the fooled sets are nested
    assert bool((fooled[1] <= fooled[3]).all() and (fooled[3] <= fooled[9]).all())
    assert 0 < int(fooled[1][5:].sum()) < 55


def test_a_target_the_box_makes_unreachable_fails_and_the_next_one_fools():
    # pixel 0 is at 1, so class 1 (score 0.5 / 10, ranked first) cannot gain; class 2 (w = (0, 1, 1),
    # gap 0.6, score 0.3) is reached within eps = 0.35 by raising pixels 1 and 2 (+0.7 > 0.6)
    w = torch.tensor([[0, 0, 0], [10, 0, 0], [0, 1, 1], [0, -1, 0]], dtype=torch.float)
    x = torch.tensor([[1.0, 0.5, 0.5]]).repeat(3, 1)
    model = linear(w.tolist(), (torch.tensor([1.0, 0.5, 0.4, 0.0]) - w @ x[0]).tolist())
    y = torch.zeros(3, dtype=torch.long)
    obj = LogitsObjective(model, y, 4)
    assert malt_targets(model, x, y, 3, 3).tolist() == [[1, 2, 3]] * 3
    for k, n_fooled in ((1, 0), (2, 3)):
        adv = MALT(MALT.Params(steps=20, n_target_classes=k))(obj, x, eps=0.35, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert int((model(adv).argmax(1) != y).sum()) == n_fooled


def test_bad_params_and_too_few_classes_raise_config_error():
    with pytest.raises(ConfigError, match="n_tested"):
        MALT(MALT.Params(n_target_classes=5, n_tested=3))
    with pytest.raises(ConfigError):
        MALT(MALT.Params(steps=0))
    model = linear(W, B)
    obj = LogitsObjective(model, torch.tensor([0]), 4)
    with pytest.raises(ConfigError, match="n_target_classes: 3"):
        MALT()(obj, torch.zeros(1, 3), eps=0.1)
    with pytest.raises(ConfigError, match="n_target_classes: 3"):  # class count unknown: read off the logits

        class NoCount:
            y = torch.tensor([0])

            def __call__(self, z):
                return model(z)

        MALT()(NoCount(), torch.zeros(1, 3), eps=0.1)


def test_the_fast_suite_is_malt_and_needs_a_task_with_logits():
    from natbench.registry import get_registry
    from natbench.resolve import resolve

    reg = get_registry()
    r = resolve(reg, "digits", "vanilla", profile="quick", suite="fast")
    assert [(a.id, a.attack) for a in r.suite.attacks] == [("malt", "malt")]
    with pytest.raises(ConfigError, match="logits"):
        resolve(reg, "reid_market", "vanilla", profile="quick", suite="fast")
