"""Square (natbench.attacks.square) against torchattacks and the original's schedules.

The torchattacks comparisons use a small CNN adversarially digits_at_cnn (PGD-AT, eps 0.2) on sklearn's digits
for a few seconds (conftest's ``digits_at_cnn``), attacked on the 359 test images at eps 0.2. Square draws
its random numbers in the original's order, so with the same seed it reproduces ``torchattacks.Square``
(``resc_schedule=False``, the AutoAttack setting) point for point. The fast test uses 500 queries (not
5000); the ``slow`` one the standard setting on 120 images.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

torchattacks = pytest.importorskip("torchattacks")

from natbench.attacks.square import Square, logit_margin, p_selection, square_side  # noqa: E402

from helpers import Logits, check_ball, fooled

EPS = 0.2


def test_trained_model_is_a_meaningful_target(digits_at_cnn):
    model, x, y = digits_at_cnn
    clean = 1 - fooled(model, x, y).float().mean().item()
    assert clean > 0.8 and len(x) == 359


def ta_square(model, n_queries, seed=0):
    return torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=n_queries, n_restarts=1, p_init=0.8,
                               loss="margin", resc_schedule=False, seed=seed)


def square_vs_torchattacks(digits_at_cnn, n_queries, n_images=None):
    model, x, y = digits_at_cnn
    x, y = x[:n_images], y[:n_images]
    ours = Square(Square.Params(n_queries=n_queries))(Logits(model, y), x, eps=EPS,
                                                      generator=torch.Generator().manual_seed(0))
    ref = ta_square(model, n_queries)(x, y)
    f_ours, f_ref = fooled(model, ours, y), fooled(model, ref, y)
    check_ball(ours, x, EPS)
    # same seed, same draws: the same images fooled, by the very same points
    assert torch.equal(f_ours, f_ref)
    assert torch.equal(ours[f_ref], ref[f_ref])
    # on images it did not fool torchattacks returns the clean image, Square the lowest-margin point
    assert torch.equal(ref[~f_ref], x[~f_ref])
    return f_ours


def test_square_500_queries_matches_torchattacks_same_seed(digits_at_cnn):
    model, x, y = digits_at_cnn
    f = square_vs_torchattacks(digits_at_cnn, 500)
    clean_wrong = fooled(model, x, y)
    assert 0.3 < f.float().mean().item() < 0.9 and (f >= clean_wrong).all()
    # an independent seed is a different random search: after 500 queries the robust accuracies
    # differ by random-search noise (measured: 13 of 359 images), not by 1 in 100
    other = Square(Square.Params(n_queries=500))(Logits(model, y), x, eps=EPS,
                                                 generator=torch.Generator().manual_seed(1))
    assert abs(fooled(model, other, y).float().mean().item() - f.float().mean().item()) <= 5 / 100


@pytest.mark.slow
def test_square_standard_5000_queries_matches_torchattacks_same_seed(digits_at_cnn):
    f = square_vs_torchattacks(digits_at_cnn, 5000, n_images=120)
    assert f.float().mean().item() > 0.4


def test_p_selection_is_the_originals_unrescaled_schedule():
    # (iteration, divisor) of autoattack/square.py p_selection with resc_schedule=False, p_init=0.8
    hand = [(0, 1), (10, 1), (11, 2), (50, 2), (51, 4), (200, 4), (201, 8), (500, 8), (501, 16),
            (1000, 16), (1001, 32), (2000, 32), (2001, 64), (4000, 64), (4001, 128), (4999, 128),
            (6000, 128), (6001, 256), (8000, 256), (8001, 512), (9999, 512)]
    ta = ta_square(nn.Identity(), 5000)
    for it, div in hand:
        assert p_selection(it, 0.8, 5000) == 0.8 / div
        assert p_selection(it, 0.8, 5000) == ta.p_selection(it)
    # the rescaled variant (torchattacks' default) maps the iteration to it / n_queries * 10000
    ta.rescale_schedule = True
    for it in (0, 5, 6, 100, 101, 300, 2500, 4999):
        assert p_selection(it, 0.8, 5000, rescale=True) == ta.p_selection(it)
    assert p_selection(300, 0.8, 5000) == 0.1 and p_selection(300, 0.8, 5000, rescale=True) == 0.05
    assert Square().params.rescale_schedule is False


def test_square_side_on_8x8():
    assert [square_side(0.8 / 2**k, 1, 8, 8) for k in range(7)] == [7, 5, 4, 3, 2, 1, 1]
    assert square_side(0.8, 3, 32, 32) == 29 and square_side(1.0, 1, 8, 8) == 8


def test_logit_margin():
    z = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]])
    torch.testing.assert_close(logit_margin(z, torch.tensor([1, 0])), torch.tensor([1.0, -5.0]))


# ------------------------------------------------------------------------ L2 and L1 (issue 16)
def _tiny_mlp(shape, n=16, seed=0):
    """A random 2-layer MLP on ``shape`` images, ``n`` uniform images labelled with its predictions
    except the first two (clean-misclassified)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(torch.Size(shape).numel(), 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(n, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10
    return model, x, y


@pytest.mark.parametrize("norm,eps,shape", [("l2", 0.5, (3, 8, 8)), ("l1", 2.0, (3, 8, 8))])
def test_square_l2_l1_match_pyautoattack_same_seed(norm, eps, shape):
    # pyautoattack 0.2.0's SquareAttack (the original's code) as AutoAttack builds it (p_init 0.8,
    # resc_schedule False), 100 queries and 2 restarts, seed 0; ours with a CPU generator seeded 0 draws
    # the same numbers in the same order: the same images fooled by the very same points (measured:
    # bit-identical, also on 1x8x8 and 3x32x32)
    from pyautoattack.square import SquareAttack

    from natbench.attacks._base import lp_norms, with_norm

    model, x, y = _tiny_mlp(shape)
    ref = SquareAttack(model, norm=norm.upper(), n_queries=100, eps=eps, p_init=0.8, n_restarts=2, seed=0, loss="margin",
                       resc_schedule=False, device="cpu").perturb(x, y)
    atk = with_norm(Square(Square.Params(n_queries=100, restarts=2)), norm, "t")
    ours = atk(Logits(model, y), x, eps=eps, generator=torch.Generator().manual_seed(0))
    f_ours, f_ref = fooled(model, ours, y), fooled(model, ref, y)
    assert 0.2 < f_ref.float().mean().item() < 0.9  # a meaningful comparison: some fooled, some not
    assert torch.equal(f_ours, f_ref) and torch.equal(ours[f_ref], ref[f_ref])
    assert (lp_norms(ours - x, norm) <= eps * (1 + 1e-6)).all() and ours.min() >= 0 and ours.max() <= 1
    assert torch.equal(ours[:2], x[:2])  # clean-misclassified: not attacked


def test_square_lp_window_matches_pyautoattack_and_hand_values():
    from pyautoattack.square import SquareAttack

    from natbench.attacks._square_lp import eta, rectangles

    cpu = torch.device("cpu")
    for norm in ("l2", "l1"):
        ref = SquareAttack(None, norm=norm.upper(), eps=1.0, device="cpu")
        for s in range(1, 14):
            torch.manual_seed(s)  # the original draws the transposition from the global RNG
            assert torch.equal(eta(s, norm, torch.Generator().manual_seed(s), cpu), ref.eta(s)), (norm, s)
    # 1 x 3 around column 1: the centre gets 1 + 1/2^q, its neighbours 1/2^q (q = 2 for L2, 4 for L1)
    l2 = torch.tensor([[0.25, 1.25, 0.25]])
    assert (rectangles(1, 3, "l2", cpu) - l2 / l2.norm()).abs().max() < 1e-7
    assert (rectangles(1, 3, "l1", cpu) - torch.tensor([[1.0, 17.0, 1.0]]) / 19).abs().max() < 1e-7
    # the window: the top half positive, the bottom half negative, unit norm, odd sizes too
    w = eta(3, "l2", torch.Generator().manual_seed(0), cpu)
    w = w if (w[0] > 0).all() else w.T  # undo the random transposition
    expect = torch.tensor([[0.25, 1.25, 0.25], [-0.25, -0.25, -0.25], [-0.25, -1.25, -0.25]])
    top, bottom = expect[:1] / expect[:1].norm(), expect[1:] / expect[1:].norm()
    assert (w - torch.cat((top, bottom)) / torch.cat((top, bottom)).norm()).abs().max() < 1e-7


def test_square_side_l2_l1_is_odd_and_at_least_3():
    # (p, side) on 8x8: round(sqrt(64 p)), at least 3, made odd, at most 8
    for p, side in ((0.8, 7), (0.4, 5), (0.2, 5), (0.1, 3), (0.05, 3), (1.0, 9 - 1)):
        assert square_side(p, 1, 8, 8, smallest=3, odd=True) == side, p
    assert square_side(0.8, 3, 32, 32, smallest=3, odd=True) == 29


def test_square_states_its_norms_and_refuses_tiny_images_in_l2():
    from natbench.attacks._base import with_norm

    assert Square.norms == ("linf", "l2", "l1")
    model, x, y = _tiny_mlp((1, 4, 4), n=6)
    with pytest.raises(ValueError, match="at least 5 x 5"):
        with_norm(Square(Square.Params(n_queries=5)), "l2", "t")(Logits(model, y), x, eps=0.5)
