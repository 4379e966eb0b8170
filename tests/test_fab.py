"""FAB-T (natbench.attacks.fab) against torchattacks: the targeted attack, its L-inf hyperplane projection,
its random start, early stop and stacked targets.

The comparisons use conftest's ``digits_at_cnn`` (a small CNN adversarially digits_at_cnn on digits) at eps
0.2; FAB-T with one restart is deterministic. The fast test uses 25 iterations (not 100) on 100 images;
the ``slow`` one the standard setting on all 359 test images.
"""
from __future__ import annotations

import pytest
import torch

torchattacks = pytest.importorskip("torchattacks")

from natbench.attacks.fab import FABT, fab_random_start, project_linf_hyperplane  # noqa: E402
from natbench.attacks.square import Square  # noqa: E402
from natbench.errors import ConfigError  # noqa: E402

from helpers import CountingLogits, Logits, check_ball, digits_like, fooled, spy

EPS = 0.2


def ta_fab(model, n_iter=100):
    return torchattacks.FAB(model, norm="Linf", eps=EPS, steps=n_iter, n_restarts=1, alpha_max=0.1, eta=1.05,
                            beta=0.9, multi_targeted=True, n_classes=10, seed=0)


def fab_vs_torchattacks(model, x, y, n_iter=100):
    ours = FABT(FABT.Params(n_iter=n_iter, early_stop=False))(Logits(model, y), x, eps=EPS)  # minimal distances
    ref = ta_fab(model, n_iter)(x, y)
    f_ours, f_ref = fooled(model, ours, y), fooled(model, ref, y)
    check_ball(ours, x, EPS)
    assert (f_ours != f_ref).float().mean().item() <= 1 / 100  # measured: identical flags
    both = f_ours & f_ref
    dist_ours = (ours - x).flatten(1).abs().amax(1)
    dist_ref = (ref - x).flatten(1).abs().amax(1)
    # the same minimal distances up to float rounding (measured: < 1e-6) ...
    assert (dist_ours[both] - dist_ref[both]).abs().max().item() < 1e-4
    # ... and almost always the same points (a pixel with a ~0 gradient may land elsewhere)
    same = (ours[both] - ref[both]).flatten(1).abs().amax(1) < 1e-3
    assert same.float().mean().item() >= 0.98
    assert torch.equal(ours[~f_ours], x[~f_ours])  # unfooled images are returned unchanged
    return f_ours


def test_fab_t_matches_torchattacks_on_100_images(digits_at_cnn):
    model, x, y = digits_at_cnn
    f = fab_vs_torchattacks(model, x[:100], y[:100], n_iter=25)
    assert 0.3 < f.float().mean().item() < 0.95


@pytest.mark.slow
def test_fab_t_matches_torchattacks_on_all_test_images(digits_at_cnn):
    model, x, y = digits_at_cnn
    fab_vs_torchattacks(model, x, y)


def test_fab_t_early_stop_and_stacked_targets_keep_every_flag(digits_at_cnn):
    # the sequential cascade without early stop is the original's; early stop and the stacked
    # targets (one batch of 9 targets per image) must fool exactly the same images
    model, x, y = digits_at_cnn
    x, y = x[:60], y[:60]
    runs = {}
    for early, stack in ((False, "off"), (True, "off"), (True, "on"), (False, "on")):
        obj = CountingLogits(model, y)
        out = FABT(FABT.Params(n_iter=25, early_stop=early, stack_targets=stack))(obj, x, eps=EPS)
        check_ball(out, x, EPS)
        runs[early, stack] = fooled(model, out, y), obj.rows, out
    ref, ref_rows, ref_out = runs[False, "off"]
    assert 0.3 < ref.float().mean().item() < 0.95
    for key, (f, rows, out) in runs.items():
        assert torch.equal(f, ref), key
        assert torch.equal(out[~f], x[~f])
    assert torch.equal(runs[False, "on"][2], ref_out)  # stacked without early stop: the very same points
    assert runs[True, "off"][1] < ref_rows  # fooled images left the batch


def test_fab_t_stack_targets_must_be_a_known_mode():
    with pytest.raises(ConfigError, match="stack_targets"):
        FABT(FABT.Params(stack_targets="yes"))


def test_linf_hyperplane_projection_matches_torchattacks():
    from torchattacks.attacks.fab import projection_linf

    g = torch.Generator().manual_seed(0)
    n, dim = 400, 20
    t = torch.rand(n, dim, generator=g, dtype=torch.float64)
    w = torch.randn(n, dim, generator=g, dtype=torch.float64)
    w[::7, :5] = 0  # coordinates that cannot move
    offset = torch.randn(n, generator=g, dtype=torch.float64) * torch.linspace(0.01, 8, n, dtype=torch.float64)
    b = (w * t).sum(1) + offset  # from hyperplanes through t to ones the box cannot reach
    d = project_linf_hyperplane(t, w, b)
    torch.testing.assert_close(d, projection_linf(t, w, b), atol=1e-9, rtol=0)
    z = t + d
    assert z.min() >= -1e-12 and z.max() <= 1 + 1e-12 and (d[::7, :5] == 0).all()
    reach = ((w * z).sum(1) - b).abs() < 1e-9
    assert reach.float().mean() > 0.3 and (~reach).any()  # both reachable and unreachable hyperplanes
    # the optimum's structure: every coordinate that can move moves by min(|d|_inf, its room to the face)
    lam = d.abs().amax(1, keepdim=True)
    flip = torch.where((w * t).sum(1, keepdim=True) >= b.unsqueeze(1), 1.0, -1.0)
    room = torch.where(w * flip < 0, 1 - t, t)
    torch.testing.assert_close(d.abs()[w != 0], torch.minimum(lam, room)[w != 0], atol=1e-9, rtol=0)


def test_fab_random_start_uses_the_generator():
    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    a = fab_random_start(x, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(a, fab_random_start(x, 0.2, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, fab_random_start(x, 0.2, torch.Generator().manual_seed(2)))
    # at L-inf distance exactly eps / 2 (no clamping needed here)
    torch.testing.assert_close((a - x).flatten(1).abs().amax(1), torch.full((50,), 0.1), atol=1e-7, rtol=0)


def test_fab_t_standard_is_deterministic_and_misclassified_images_are_not_attacked():
    model = spy(False)
    x, y = digits_like(model)
    obj = Logits(model, y)
    fab = FABT(FABT.Params(n_iter=5, n_target_classes=2))
    assert torch.equal(fab(obj, x, eps=0.3, generator=torch.Generator().manual_seed(1)),
                       fab(obj, x, eps=0.3, generator=torch.Generator().manual_seed(2)))
    wrong = fooled(model, x, y)
    assert torch.equal(wrong, torch.arange(len(y)) < 4)
    for atk in (Square(Square.Params(n_queries=20)), fab):
        out = atk(obj, x, eps=0.3, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[wrong], x[wrong])  # clean-misclassified images are not attacked
        assert not torch.equal(out[~wrong], x[~wrong])
