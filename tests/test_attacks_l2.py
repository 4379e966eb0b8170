"""natbench.attacks._l2: L2 PGD (start, normalised step, projection) against torchattacks.PGDL2 and by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from natbench.attacks._l2 import l2_grad, pgd_l2, project_l2

torchattacks = pytest.importorskip("torchattacks")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10)).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)


def test_projection_by_hand():
    """delta (3, 4) has norm 5: eps 1 scales it to (0.6, 0.8); a delta inside the ball is kept; [0, 1] last."""
    x = torch.zeros(1, 2)
    assert torch.allclose(project_l2(torch.tensor([[3.0, 4.0]]), x, 1.0), torch.tensor([[0.6, 0.8]]))
    assert torch.equal(project_l2(torch.tensor([[0.3, 0.4]]), x, 1.0), torch.tensor([[0.3, 0.4]]))
    assert torch.equal(project_l2(x, x, 1.0), x)  # zero delta: no division by zero
    assert torch.allclose(project_l2(torch.tensor([[-3.0, 4.0]]), x, 1.0), torch.tensor([[0.0, 0.8]]))


def test_the_step_is_the_gradient_over_its_norm():
    """For the linear loss w.x the normalised gradient is w / ||w||_2 in every row."""
    w = torch.tensor([1.0, -2.0, 2.0])
    g = l2_grad(lambda z: z @ w, torch.rand(4, 3))
    assert torch.allclose(g, (w / 3).expand(4, 3))


@pytest.mark.parametrize("random_start", [False, True])
def test_equals_torchattacks_pgdl2(random_start):
    model, (x, y) = _model(), _data()
    eps, alpha, steps = 0.5, 0.1, 10
    torch.manual_seed(7)
    ref = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)(x, y)
    torch.manual_seed(7)
    ours = pgd_l2(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=eps, steps=steps,
                  step_size=alpha, random_start=random_start)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (ours - x).flatten(1).norm(dim=1).max() <= eps + 1e-5 and 0 <= ours.min() and ours.max() <= 1
    assert not torch.equal(ours, x)


def test_the_attack_raises_the_loss_and_a_generator_makes_it_reproducible():
    model, (x, y) = _model(), _data()
    obj = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    a = pgd_l2(obj, x, eps=1.0, steps=10, step_size=0.25, random_start=True, generator=torch.Generator().manual_seed(3))
    b = pgd_l2(obj, x, eps=1.0, steps=10, step_size=0.25, random_start=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (obj(a) > obj(x)).all()


# --------------------------------------------------------------------------- the pgd and fgsm attacks in L2
def _bound(cls, **params):
    from natbench.attacks._base import with_norm

    return with_norm(cls(cls.Params(**params)), "l2", "test")


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_attack_in_l2_equals_torchattacks_pgdl2_per_sample(random_start):
    """The registered ``pgd`` bound to L2 is torchattacks.PGDL2 row for row (same global RNG draws)."""
    from natbench.attacks.pgd import PGD

    model, (x, y) = _model(), _data()
    eps, steps = 0.8, 7
    torch.manual_seed(11)
    ref = torchattacks.PGDL2(model, eps=eps, alpha=eps / 4, steps=steps, random_start=random_start)(x, y)
    torch.manual_seed(11)
    ours = _bound(PGD, steps=steps, random_start=random_start)(
        lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=eps)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (model(ours).argmax(1) == model(ref).argmax(1)).all()
    assert (ours - x).flatten(1).norm(dim=1).max() <= eps + 1e-5


def test_pgd_l2_restarts_keep_the_highest_final_loss_and_early_stop_keeps_the_fooled_iterate():
    from natbench.attacks.pgd import PGD, pgd_lp
    from natbench.contracts import LogitsObjective

    model, (x, y) = _model(), _data()
    obj = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    first = _bound(PGD, steps=4)(obj, x, eps=1.0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    best = _bound(PGD, steps=4, restarts=3)(obj, x, eps=1.0, generator=g)
    g = torch.Generator().manual_seed(0)  # the three restarts draw from one generator in turn
    singles = [pgd_lp(obj, x, norm="l2", eps=1.0, steps=4, step_size=0.25, random_start=True, generator=g) for _ in range(3)]
    assert torch.equal(singles[0], first)
    losses = torch.stack([obj(s) for s in singles]).detach()
    want = torch.stack(singles)[losses.argmax(0), torch.arange(len(x))]
    assert torch.allclose(best, want)
    # early stop: a row fooled by the every-point run is fooled, and everything stays in the ball
    es = _bound(PGD, steps=10, early_stop=True)(LogitsObjective(model, y, 10), x, eps=1.0,
                                                  generator=torch.Generator().manual_seed(4))
    full = _bound(PGD, steps=10)(obj, x, eps=1.0, generator=torch.Generator().manual_seed(4))
    fooled_full, fooled_es = model(full).argmax(1) != y, model(es).argmax(1) != y
    assert fooled_full.any() and (fooled_full <= fooled_es).all()
    assert torch.equal(es[~fooled_es], full[~fooled_es])  # never-fooled rows: the every-point run's iterate
    assert (es - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5


def test_fgm_l2_is_one_normalised_gradient_step_of_eps_by_hand():
    """Loss w.x has gradient w in every row: x' = clip(x + eps * w / ||w||_2) (cleverhans fast_gradient_method,
    norm=2); an all-zero gradient leaves x unchanged (the 1e-12 floor on the squared norm)."""
    from natbench.attacks.fgsm import FGSM

    w = torch.tensor([3.0, 0.0, -4.0, 0.0])
    x = torch.full((2, 4), 0.5)
    out = _bound(FGSM)(lambda z: z @ w, x, eps=0.5)
    assert torch.allclose(out, torch.tensor([[0.8, 0.5, 0.1, 0.5]] * 2))  # 0.5 * (0.6, 0, -0.8, 0)
    big = _bound(FGSM)(lambda z: z @ w, x, eps=2.0)  # the step 2 * (0.6, -0.8) leaves the box: clipped
    assert torch.allclose(big, torch.tensor([[1.0, 0.5, 0.0, 0.5]] * 2))
    assert torch.equal(_bound(FGSM)(lambda z: z.sum(1) * 0, x, eps=0.5), x)
    rs = _bound(FGSM, random_start=True)(lambda z: z @ w, x, eps=0.5, generator=torch.Generator().manual_seed(0))
    assert (rs - x).norm(dim=1).max() <= 0.5 + 1e-6 and 0 <= rs.min() and rs.max() <= 1
