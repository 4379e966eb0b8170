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
