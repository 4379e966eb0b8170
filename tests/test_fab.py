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

from natbench.attacks._base import lp_norms  # noqa: E402
from natbench.attacks._fab_proj import project_l1_hyperplane, project_l2_hyperplane  # noqa: E402
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


# ------------------------------------------------------------------------ L2 and L1 (issue 16)
def _tiny_mlp(shape=(1, 8, 8), n=20, seed=0):
    """A random 2-layer MLP on ``shape`` images, ``n`` uniform images labelled with its predictions
    except the first two (clean-misclassified)."""
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(torch.Size(shape).numel(), 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(n, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10
    return model, x, y


@pytest.mark.parametrize("norm,eps,shape", [("l2", 0.15, (3, 8, 8)), ("l1", 1.0, (1, 8, 8))])
def test_fab_t_l2_l1_match_pyautoattack_per_sample(norm, eps, shape):
    # FAB-T of pyautoattack 0.2.0 (the original's code) with 2 restarts: the second starts at a random
    # point (torch.randn after manual_seed(0); ours from a generator seeded 0). Without early stop the
    # very same points (measured: bit-identical); with early stop and stacked targets the same flags.
    from pyautoattack.fab_pt import FABAttack_PT

    from natbench.attacks._base import with_norm

    model, x, y = _tiny_mlp(shape, n=16)
    ref = FABAttack_PT(model, norm=norm.upper(), n_restarts=2, n_iter=10, eps=eps, targeted=True, n_target_classes=9,
                       seed=0, device="cpu").perturb(x, y)
    f_ref = fooled(model, ref, y)
    assert 0.2 < f_ref.float().mean().item() < 0.9  # a meaningful comparison: some fooled, some not
    for early, stack in ((False, "off"), (True, "off"), (True, "on")):
        restarts = 1 if stack == "on" else 2
        atk = with_norm(FABT(FABT.Params(n_iter=10, restarts=restarts, early_stop=early, stack_targets=stack)), norm, "t")
        out = atk(Logits(model, y), x, eps=eps, generator=torch.Generator().manual_seed(0))
        assert torch.equal(fooled(model, out, y), f_ref), (early, stack)
        assert (lp_norms(out - x, norm) <= eps * (1 + 1e-6)).all() and out.min() >= 0 and out.max() <= 1
        if not early:
            assert torch.equal(out, ref)


def test_fab_t_states_its_norms_and_reads_the_bound_one():
    from natbench.attacks._base import with_norm

    assert FABT.norms == ("linf", "l2", "l1")
    model, x, y = _tiny_mlp(n=12)
    fab = FABT(FABT.Params(n_iter=5))
    linf = fab(Logits(model, y), x, eps=0.05)
    l2 = with_norm(FABT(FABT.Params(n_iter=5)), "l2", "t")(Logits(model, y), x, eps=0.05)
    assert not torch.equal(linf, l2)  # another norm, another attack
    assert (lp_norms(l2 - x, "l2") <= 0.05 * (1 + 1e-6)).all()


@pytest.mark.parametrize("n", [20, 64])
def test_l2_l1_hyperplane_projections_match_pyautoattack(n):
    from pyautoattack.fab_projections import projection_l1, projection_l2

    g = torch.Generator().manual_seed(0)
    m = 300
    t = torch.rand(m, n, generator=g)
    w = torch.randn(m, n, generator=g)
    w[::7, :5] = 0  # coordinates that cannot move
    t[::5, 5:8] = torch.tensor([0.0, 1.0, 0.5])  # on the faces
    offset = torch.randn(m, generator=g) * torch.linspace(0.01, n, m)
    b = (w * t).sum(1) + offset  # from hyperplanes near t to ones the box cannot reach
    for ours, ref, norm in ((project_l2_hyperplane, projection_l2, "l2"), (project_l1_hyperplane, projection_l1, "l1")):
        d = ours(t, w, b)
        assert torch.equal(d, ref(t, w.clone(), b.clone())), norm  # the same float operations
        z = t + d
        assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6 and (d[::7, :5] == 0).all()
        reach = ((w * z).sum(1) - b).abs() < 1e-4
        assert reach.float().mean() > 0.3 and (~reach).any(), norm  # both reachable and unreachable


def _dd(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def _close(a, b):
    assert a.shape == b.shape and (a - b).abs().max().item() < 1e-12, (a, b)


def test_l2_hyperplane_projection_by_hand():
    # no coordinate clips: d = -(c / |w|^2) w with c = w.t - b
    _close(project_l2_hyperplane(_dd([0.5, 0.5]), _dd([1.0, 1.0]), _dd(0.5)), _dd([-0.25, -0.25]))
    # the other side of the hyperplane: the step goes up
    _close(project_l2_hyperplane(_dd([0.5, 0.5]), _dd([1.0, 1.0]), _dd(1.5)), _dd([0.25, 0.25]))
    # c = 0.4: -0.2 each would put t_0 = 0.1 below 0; it stops at its face and the other moves 0.3
    _close(project_l2_hyperplane(_dd([0.1, 0.5]), _dd([1.0, 1.0]), _dd(0.2)), _dd([-0.1, -0.3]))
    # three coordinates, weights (2, 1, 0): w=0 never moves; c = 1.5 - 0.25 -> lam = 1.25 / 5
    _close(project_l2_hyperplane(_dd([0.5, 0.5, 0.5]), _dd([2.0, 1.0, 0.0]), _dd(0.25)),
                               _dd([-0.5, -0.25, 0.0]))
    # the box cannot reach the hyperplane: every coordinate moves to its face
    _close(project_l2_hyperplane(_dd([0.1, 0.2]), _dd([1.0, -1.0]), _dd(-2.0)), _dd([-0.1, 0.8]))


def test_l1_hyperplane_projection_by_hand():
    # the largest |w_i| moves first: c = 0.5 is covered by coordinate 0 alone (0.5 / 2)
    _close(project_l1_hyperplane(_dd([0.5, 0.5]), _dd([2.0, 1.0]), _dd(1.0)), _dd([-0.25, 0.0]))
    # c = 0.9: coordinate 0 to its face (0.25 * 2 = 0.5), coordinate 1 the remaining 0.4
    _close(project_l1_hyperplane(_dd([0.25, 0.5]), _dd([2.0, 1.0]), _dd(0.1)), _dd([-0.25, -0.4]))
    # negative weight: moving up lowers w.z; the larger |w| goes first
    _close(project_l1_hyperplane(_dd([0.5, 0.5]), _dd([1.0, -4.0]), _dd(-3.5)), _dd([0.0, 0.5]))
    _close(project_l1_hyperplane(_dd([0.5, 0.5]), _dd([1.0, -4.0]), _dd(-2.5)), _dd([0.0, 0.25]))
    # unreachable: every coordinate to its face
    _close(project_l1_hyperplane(_dd([0.5, 0.5]), _dd([1.0, 1.0]), _dd(-1.0)), _dd([-0.5, -0.5]))


def test_fab_random_start_l2_l1_at_half_eps():
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4
    for norm in ("l2", "l1"):
        a = fab_random_start(x, 0.4, torch.Generator().manual_seed(1), norm)
        assert torch.equal(a, fab_random_start(x, 0.4, torch.Generator().manual_seed(1), norm))
        assert (lp_norms(a - x, norm) - 0.2).abs().max() < 1e-5
