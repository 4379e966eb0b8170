"""Square, FAB-T and GAMA-PGD: cross-checks against torchattacks, hand computations, invariants.

The torchattacks comparisons use a small CNN adversarially trained (PGD-AT, eps 0.2) on sklearn's
digits for a few seconds, attacked on the 359 test images at eps 0.2. Square draws its random
numbers in the original's order, so with the same seed it reproduces ``torchattacks.Square``
(``resc_schedule=False``, the AutoAttack setting) point for point; FAB-T with one restart is
deterministic. The fast tests use 500 Square queries (not 5000) and FAB-T with 25 iterations (not
100) on 100 images; the ``slow`` ones the standard settings (Square on 120 images, FAB-T on all).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

torchattacks = pytest.importorskip("torchattacks")

from natbench.attacks.fab import FABT, fab_random_start, project_linf_hyperplane  # noqa: E402
from natbench.attacks.gama import (  # noqa: E402
    GAMAPGD,
    bernoulli_start,
    gama_loss,
    lambda_at,
    softmax_margin,
    step_at,
)
from natbench.attacks.pgd import pgd_linf  # noqa: E402
from natbench.attacks.square import Square, logit_margin, p_selection, square_side  # noqa: E402
from natbench.contracts import Attack  # noqa: E402
from natbench.errors import ConfigError  # noqa: E402

EPS = 0.2


class Logits:
    """A stand-in for the task's ``LogitsObjective``: ``x -> model(x)`` with ``.y``, ``.num_classes``."""

    def __init__(self, model: nn.Module, y: torch.Tensor, num_classes: int = 10):
        self.model, self.y, self.num_classes = model, y, num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, 10),
    )


@pytest.fixture(scope="module")
def trained():
    """(model in eval mode, test x, test y): 2 clean + 10 PGD-AT epochs (5 steps of eps/2.5) at eps 0.2."""
    from natbench.data.digits import read

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and the machine is shared
    d = read()
    torch.manual_seed(0)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(12):
        perm = torch.randperm(len(d.train_x), generator=g)
        for i in range(0, len(perm), 64):
            xb, yb = d.train_x[perm[i:i + 64]], d.train_y[perm[i:i + 64]]
            if epoch >= 2:
                model.eval()
                xb = pgd_linf(lambda z: F.cross_entropy(model(z), yb, reduction="none"), xb, eps=EPS,
                              steps=5, step_size=EPS / 2.5, random_start=True, generator=g)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    yield model, d.test_x, d.test_y
    torch.set_num_threads(threads)


def fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


def check_ball(out: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert (out - x).abs().max().item() <= eps + 1e-6
    assert out.min().item() >= 0 and out.max().item() <= 1


def test_trained_model_is_a_meaningful_target(trained):
    model, x, y = trained
    clean = 1 - fooled(model, x, y).float().mean().item()
    assert clean > 0.8 and len(x) == 359


# --------------------------------------------------------------------------- Square


def ta_square(model, n_queries, seed=0):
    return torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=n_queries, n_restarts=1, p_init=0.8,
                               loss="margin", resc_schedule=False, seed=seed)


def square_vs_torchattacks(trained, n_queries, n_images=None):
    model, x, y = trained
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


def test_square_500_queries_matches_torchattacks_same_seed(trained):
    model, x, y = trained
    f = square_vs_torchattacks(trained, 500)
    clean_wrong = fooled(model, x, y)
    assert 0.3 < f.float().mean().item() < 0.9 and (f >= clean_wrong).all()
    # an independent seed is a different random search: after 500 queries the robust accuracies
    # differ by random-search noise (measured: 13 of 359 images), not by 1 in 100
    other = Square(Square.Params(n_queries=500))(Logits(model, y), x, eps=EPS,
                                                 generator=torch.Generator().manual_seed(1))
    assert abs(fooled(model, other, y).float().mean().item() - f.float().mean().item()) <= 5 / 100


@pytest.mark.slow
def test_square_standard_5000_queries_matches_torchattacks_same_seed(trained):
    f = square_vs_torchattacks(trained, 5000, n_images=120)
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


# --------------------------------------------------------------------------- FAB-T


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


def test_fab_t_matches_torchattacks_on_100_images(trained):
    model, x, y = trained
    f = fab_vs_torchattacks(model, x[:100], y[:100], n_iter=25)
    assert 0.3 < f.float().mean().item() < 0.95


@pytest.mark.slow
def test_fab_t_matches_torchattacks_on_all_test_images(trained):
    model, x, y = trained
    fab_vs_torchattacks(model, x, y)


class CountingLogits(Logits):
    rows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def test_fab_t_early_stop_and_stacked_targets_keep_every_flag(trained):
    # the sequential cascade without early stop is the original's; early stop and the stacked
    # targets (one batch of 9 targets per image) must fool exactly the same images
    model, x, y = trained
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


def test_gama_early_stop_fools_every_image_the_reference_fools_with_less_work(trained):
    # same start, same trajectory up to the first fooling iterate: every image the reference's last
    # iterate fools was fooled by some iterate, which early stop keeps
    model, x, y = trained
    x, y = x[:80], y[:80]
    runs = {}
    for early in (False, True):
        obj = CountingLogits(model, y)
        out = GAMAPGD(GAMAPGD.Params(steps=20, early_stop=early))(obj, x, eps=EPS, generator=torch.Generator().manual_seed(0))
        check_ball(out, x, EPS)
        runs[early] = fooled(model, out, y), obj.rows
    (f0, rows0), (f1, rows1) = runs[False], runs[True]
    assert not (f0 & ~f1).any() and f0.sum() > 10
    assert rows1 < rows0


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


# --------------------------------------------------------------------------- GAMA-PGD


def test_gama_lambda_schedule_is_the_references():
    w_reg, lin = 50.0, 25
    ref, W = [], w_reg  # GAMA_PGD.py: `if step <= lin: use W_REG; W_REG -= w_reg/lin` else no term
    for step in range(100):
        ref.append(W if step <= lin else 0.0)
        if step <= lin:
            W -= w_reg / lin
    ours = [lambda_at(t, w_reg, lin) for t in range(100)]
    assert ours == pytest.approx(ref, abs=1e-12)
    assert ours[:3] == [50.0, 48.0, 46.0] and ours[25] == 0.0 and ours[26:] == [0.0] * 74
    assert lambda_at(10, 5.0, 50) == 4.0 and lambda_at(0, 5.0, 0) == 0.0


def test_gama_step_schedule_is_the_references():
    eps_iter, ref = 16 / 255, []  # `if step in SCHED: eps_iter /= drop`, then the step uses eps_iter
    for step in range(100):
        if step in (60, 85):
            eps_iter /= 10
        ref.append(eps_iter)
    ours = [step_at(t, 16 / 255, (60, 85), 10.0) for t in range(100)]
    assert ours == pytest.approx(ref, rel=1e-12)
    assert ours[59] == 16 / 255 and ours[60] == pytest.approx(1.6 / 255) and ours[99] == pytest.approx(0.16 / 255)
    p = GAMAPGD().params
    defaults = (p.steps, p.step_size, p.milestones, p.drop, p.w_reg, p.lambda_steps)
    assert defaults == (100, None, (60, 85), 10.0, 50.0, 25)


def test_gama_bernoulli_start_is_plus_minus_eps_then_clamped():
    eps = 0.1
    x = torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0]).repeat(2000).view(-1, 1, 5)
    s = bernoulli_start(x, eps, torch.Generator().manual_seed(0))
    up, down = torch.clamp(x + eps, 0, 1), torch.clamp(x - eps, 0, 1)
    assert ((s == up) | (s == down)).all()
    frac_up = (s[:, :, 2] == up[:, :, 2]).float().mean().item()
    assert 0.45 < frac_up < 0.55  # a fair coin per pixel
    torch.testing.assert_close((s - x)[:, :, 2].abs(), torch.full((2000, 1), eps), atol=1e-7, rtol=0)
    assert torch.equal(s, bernoulli_start(x, eps, torch.Generator().manual_seed(0)))


def softmax_by_hand(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def test_gama_loss_on_a_linear_model_equals_hand_computation():
    W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.3, 0.2, -1.0, 2.0], [-0.5, 1.5, 1.0, -1.0]], dtype=torch.float64)
    x = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.5, 0.3]], dtype=torch.float64)
    x_clean = torch.tensor([[0.25, 0.35, 0.6, 0.7], [0.8, 0.2, 0.5, 0.3]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    lam = 50.0 * (1 - 3 / 25)  # lambda at step 3
    expected = []
    for i in range(2):
        q = softmax_by_hand([sum(W[c, k].item() * x[i, k].item() for k in range(4)) for c in range(3)])
        p = softmax_by_hand([sum(W[c, k].item() * x_clean[i, k].item() for k in range(4)) for c in range(3)])
        yi = int(y[i])
        margin = max(q[c] for c in range(3) if c != yi) - q[yi]
        expected.append(margin + lam * sum((p[c] - q[c]) ** 2 for c in range(3)))
    p_guide = torch.softmax(x_clean @ W.T, dim=1)
    got = gama_loss(x @ W.T, y, p_guide, lam)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    # after lambda_steps only the softmax margin is left
    torch.testing.assert_close(gama_loss(x @ W.T, y, p_guide, 0.0), softmax_margin(torch.softmax(x @ W.T, 1), y))


def test_gama_one_step_is_the_signed_gradient_of_the_hand_loss():
    """One step from the Bernoulli start: sign of W^T (diag(Q) - QQ^T)(e_j - e_y + 2 lam (Q - P)) with
    P the clean image's softmax (the guide), step 2 eps, then [0, 1] and the eps-ball."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 5).double()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    eps = 0.05
    start = bernoulli_start(x, eps, torch.Generator().manual_seed(11))
    W = lin.weight.detach()
    with torch.no_grad():
        q = torch.softmax(model(start), 1)
        p = torch.softmax(model(x), 1)
    masked = q.clone()
    masked[torch.arange(8), y] = -1.0
    j = masked.argmax(1)
    dl_dq = F.one_hot(j, 5).double() - F.one_hot(y, 5).double() + 2 * 50.0 * (q - p)
    jac = torch.diag_embed(q) - q.unsqueeze(2) * q.unsqueeze(1)
    grad = (jac @ dl_dq.unsqueeze(2)).squeeze(2) @ W
    expected = torch.clamp(start + 2 * eps * grad.sign().view_as(x), 0, 1)
    expected = x + torch.clamp(expected - x, -eps, eps)
    atk = GAMAPGD(GAMAPGD.Params(steps=1, guide="clean"))
    out = atk(Logits(model, y, 5), x, eps=eps, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    # guide="start": P is the start's softmax, so at step 0 the guide term has zero gradient
    grad0 = (jac @ (F.one_hot(j, 5).double() - F.one_hot(y, 5).double()).unsqueeze(2)).squeeze(2) @ W
    exp0 = torch.clamp(start + 2 * eps * grad0.sign().view_as(x), 0, 1)
    exp0 = x + torch.clamp(exp0 - x, -eps, eps)
    out0 = GAMAPGD(GAMAPGD.Params(steps=1, guide="start"))(Logits(model, y, 5), x, eps=eps,
                                                             generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(out0, exp0, atol=1e-12, rtol=0)


def test_gama_pgd_is_at_least_as_strong_as_pgd_on_the_trained_model(trained):
    model, x, y = trained
    out = GAMAPGD()(Logits(model, y), x, eps=EPS, generator=torch.Generator().manual_seed(0))
    check_ball(out, x, EPS)
    pgd = pgd_linf(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=EPS, steps=20,
                   step_size=EPS / 4, random_start=True, generator=torch.Generator().manual_seed(0))
    assert fooled(model, out, y).float().mean() >= fooled(model, pgd, y).float().mean() - 1 / 100


# --------------------------------------------------------------------------- invariants


class ModeSpy(nn.Module):
    """Conv + BatchNorm2d + dropout net that records every train()/eval() call after construction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        self.calls: list[bool] = []

    def train(self, mode: bool = True):
        if hasattr(self, "calls"):
            self.calls.append(mode)
        return super().train(mode)

    def forward(self, x):
        return self.net(x)


def spy(training: bool) -> ModeSpy:
    m = ModeSpy().train(training)
    m.calls.clear()
    return m


ATTACKS = [
    Square(Square.Params(n_queries=40)),
    Square(Square.Params(n_queries=15, restarts=2)),
    FABT(FABT.Params(n_iter=5, n_target_classes=3)),
    FABT(FABT.Params(n_iter=4, n_target_classes=2, restarts=2)),
    GAMAPGD(GAMAPGD.Params(steps=6, milestones=(3, 5), lambda_steps=2)),
    GAMAPGD(GAMAPGD.Params(steps=3, guide="start", restarts=2)),
]
RANDOM = [a for a in ATTACKS if not isinstance(a, FABT)]  # FAB-T's random restarts: see below


def digits_like(model: nn.Module, n=24, seed=1):
    """Random 8x8 images labelled with the model's predictions, except the first 4 (misclassified)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return x, y


@pytest.mark.parametrize("atk", ATTACKS, ids=lambda a: f"{a.name}-{a.params}")
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("eps", [0.0, 8 / 255, 0.3])
def test_invariants(atk, training, eps):
    assert isinstance(atk, Attack) and atk.objective_kind == "logits"
    model = spy(training)
    x, y = digits_like(spy(False))
    x_in = x.clone().requires_grad_(True)
    with torch.no_grad():  # evaluation loops call attacks under no_grad
        out = atk(Logits(model, y), x_in, eps=eps, generator=torch.Generator().manual_seed(0))
    check_ball(out, x, eps)
    assert model.calls == [] and all(m.training == training for m in model.modules())
    assert all(p.grad is None for p in model.parameters()) and x_in.grad is None


@pytest.mark.parametrize("atk", ATTACKS, ids=lambda a: f"{a.name}-{a.params}")
def test_reproducible_under_a_generator_and_global_rng_untouched(atk):
    model = spy(False)
    x, y = digits_like(model)
    obj = Logits(model, y)
    eps = 0.1  # FAB-T leaves images robust after its first restart: the second one draws its start
    with torch.no_grad():
        a0 = atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(7))
    state = torch.get_rng_state()
    a = atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, a0) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a, x)  # it did something
    if atk in RANDOM:
        c = atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(8))
        assert not torch.equal(a, c)


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


def test_defaults_are_autoattack_standard():
    assert (Square.name, FABT.name, GAMAPGD.name) == ("square", "fab-t", "gama-pgd")
    assert Square().params == Square.Params(n_queries=5000, p_init=0.8, restarts=1, rescale_schedule=False)
    assert FABT().params == FABT.Params(n_target_classes=9, n_iter=100, restarts=1, alpha_max=0.1, eta=1.05,
                                        beta=0.9)
    assert GAMAPGD().params.guide == "start" and GAMAPGD().params.restarts == 1


@pytest.mark.parametrize("cls", [Square, FABT, GAMAPGD])
@pytest.mark.parametrize("eps", [-1e-3, float("nan")])
def test_bad_eps_raises_config_error(cls, eps):
    x, y = digits_like(spy(False), 4)
    with pytest.raises(ConfigError):
        cls()(Logits(spy(False), y), x, eps=eps)


def test_bad_params_raise_config_error():
    for bad in (Square.Params(restarts=0), Square.Params(p_init=0.0), Square.Params(n_queries=-1)):
        with pytest.raises(ConfigError):
            Square(bad)
    for bad in (FABT.Params(n_target_classes=0), FABT.Params(restarts=0), FABT.Params(n_iter=-1)):
        with pytest.raises(ConfigError):
            FABT(bad)
    for bad in (GAMAPGD.Params(guide="adv"), GAMAPGD.Params(restarts=0), GAMAPGD.Params(drop=0.0)):
        with pytest.raises(ConfigError):
            GAMAPGD(bad)
    with pytest.raises(ConfigError):
        Square(FABT.Params())
