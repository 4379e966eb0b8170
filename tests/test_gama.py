"""GAMA-PGD (natbench.attacks.gama) against the reference's schedules and hand computations, and on conftest's
``digits_at_cnn`` (early stop, at least as strong as PGD).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natbench.attacks.gama import (
    GAMAPGD,
    bernoulli_start,
    gama_loss,
    lambda_at,
    softmax_margin,
    step_at,
)
from natbench.attacks.pgd import pgd_linf

from helpers import CountingLogits, Logits, check_ball, fooled

EPS = 0.2


def test_gama_early_stop_fools_every_image_the_reference_fools_with_less_work(digits_at_cnn):
    # same start, same trajectory up to the first fooling iterate: every image the reference's last
    # iterate fools was fooled by some iterate, which early stop keeps
    model, x, y = digits_at_cnn
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


def test_gama_pgd_is_at_least_as_strong_as_pgd_on_the_trained_model(digits_at_cnn):
    model, x, y = digits_at_cnn
    out = GAMAPGD()(Logits(model, y), x, eps=EPS, generator=torch.Generator().manual_seed(0))
    check_ball(out, x, EPS)
    pgd = pgd_linf(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=EPS, steps=20,
                   step_size=EPS / 4, random_start=True, generator=torch.Generator().manual_seed(0))
    assert fooled(model, out, y).float().mean() >= fooled(model, pgd, y).float().mean() - 1 / 100
