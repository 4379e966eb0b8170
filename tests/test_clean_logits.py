"""natbench.attacks._clean: clean logits computed once and handed on (AutoAttack -> its components).

Hand-derived on a linear 10-class model of 1x4x4 images: AutoAttack evaluates each clean row once
without gradient (before: once in AutoAttack, once more in every component and again in the check
after each component), and its adversarial examples are bit-identical to those of the same cascade
where nothing is carried.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import natbench.attacks.autoattack as aa_mod
from natbench.attacks._clean import carrying, clean_logits
from natbench.attacks.autoattack import AutoAttack
from natbench.contracts import LogitsObjective

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(nn.Module):
    """A linear 10-class model on 1x4x4 images that records every forward's input and grad mode."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(16, 10, generator=g)
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), torch.is_grad_enabled() and x.requires_grad))
        return x.flatten(1) @ self.w

    def clean_nograd_rows(self, x: torch.Tensor) -> int:
        """Rows of the no-grad forwards that are exactly a clean input."""
        n = 0
        for inp, grad in self.calls:
            if not grad:
                n += int((inp.flatten(1)[:, None] == x.flatten(1)[None]).all(-1).any(1).sum())
        return n


def data(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return x, Recorder()


def test_clean_logits_are_the_carried_ones_only_for_that_input():
    x, model = data(6)
    obj = LogitsObjective(model, torch.zeros(6, dtype=torch.long), 10)
    z = torch.full((6, 10), 7.0)  # not the model's logits: shows which ones are returned
    carried = carrying(obj, x, z)
    assert torch.equal(clean_logits(carried, x.clone()), z) and not model.calls  # same values: no forward
    other = x.clone()
    other[3, 0, 0, 0] += 1e-6
    assert torch.equal(clean_logits(carried, other), model(other)) and len(model.calls) == 2  # differs: forward
    assert torch.equal(clean_logits(carried, x[:5]), model(x[:5]))  # another shape: forward
    assert torch.equal(clean_logits(obj, x), model(x))  # nothing carried: forward


@pytest.mark.parametrize("eps", [1e-3, 0.3])  # 1e-3: every point stays robust; 0.3: most are fooled
def test_autoattack_evaluates_each_clean_row_once_and_returns_the_same_examples(eps, monkeypatch):
    x, model = data()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # 4 clean-misclassified points: never attacked
    model.calls.clear()
    params = AutoAttack.Params(n_iter=4, n_queries=6, n_target_classes=3, bs=10)  # 20 clean-correct: chunks 10, 10

    def run():
        model.calls.clear()
        x_adv = AutoAttack(params)(LogitsObjective(model, y, 10), x, eps=eps, generator=torch.Generator().manual_seed(0))
        return x_adv, model.clean_nograd_rows(x), sum(len(i) for i, _ in model.calls)

    adv, clean_rows, rows = run()
    assert clean_rows == len(x)  # AutoAttack's one clean forward; no component nor check repeats it
    # the same cascade with nothing carried and every row of every component's output checked
    monkeypatch.setattr(aa_mod, "carrying", lambda obj, x_, z: obj)

    def check_all(forward, adv_, x_, y_, **_):
        with torch.no_grad():
            return forward(adv_).max(1)[1] != y_

    monkeypatch.setattr(AutoAttack, "_fooled_rows", staticmethod(check_all))
    adv_before, clean_rows_before, rows_before = run()
    assert torch.equal(adv, adv_before)
    robust = model(adv).argmax(1) == y
    if eps < 0.01:  # all 20 stay robust. Before, APGD-CE, APGD-T and FAB-T each evaluated them twice more
        # (the component's own clean forward, AutoAttack's check of its output: the clean input where it
        # failed), Square once (its own; it returns its lowest-margin point, which the check evaluates)
        assert int(robust.sum()) == 20
        assert clean_rows_before - clean_rows == 3 * 2 * 20 + 20 == rows_before - rows
    else:
        assert int(robust.sum()) < 20 and clean_rows_before > clean_rows and rows_before > rows


def test_autoattack_rand_follows_the_original_on_a_randomized_model():
    """A randomized model's logits differ at every call: AutoAttack-rand carries no clean logits (a
    component draws its own, as the original's do) and its check after a component evaluates every
    row it was given, as the original does (a point whose unchanged clean input a later random draw
    misclassifies is not robust). Hand-derived: a model right on its first call and wrong on every
    later one, and a component that returns its input unchanged; the deterministic shortcuts would
    hand the component the first call's logits and keep all 4 points robust."""
    from natbench.attacks.autoattack import AutoAttackRand

    class FlipAfterFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.n += 1
            out = torch.zeros(len(x), 10)
            out[:, 0 if self.n == 1 else 1] = 1.0  # label 0: right once, then wrong
            return out + 0 * x.flatten(1).sum(1, keepdim=True)

    seen = []

    def unchanged(objective, x, *, eps, generator=None):
        seen.append(clean_logits(objective, x).max(1)[1])
        return x.clone()

    x = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    aa = AutoAttackRand(AutoAttackRand.Params(attacks=("apgd-ce",)))
    aa.components = [("apgd-ce", unchanged)]
    adv = aa(LogitsObjective(FlipAfterFirst(), y, 10), x, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, x)
    assert seen[0].tolist() == [1, 1, 1, 1]  # the component's own draw, not the carried first call
    assert aa._fooled["apgd-ce"] == 4  # the check's draw misclassifies the unchanged inputs
