"""natbench.attacks.pgd's opt-in early stop against its every-point run (PGD vs torchattacks: test_attacks.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natbench.attacks.pgd import PGD
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError


class Counted(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def setup(n: int = 120):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def fooled(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) != y


def test_a_logits_objective_without_early_stop_is_the_ce_objective_exactly():
    model, x, y = setup(32)
    atk = PGD(PGD.Params(steps=5))
    a = atk(LogitsObjective(model, y, 10), x, eps=0.05, generator=torch.Generator().manual_seed(3))
    b = atk(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=0.05,
            generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("eps", [0.04, 0.06])
def test_early_stop_keeps_the_flags_and_the_work_falls(restarts, eps):
    model, x, y = setup()
    params = dict(steps=10, restarts=restarts)
    counted = Counted(model)
    every = PGD(PGD.Params(**params))(LogitsObjective(counted, y, 10), x, eps=eps, generator=torch.Generator().manual_seed(5))
    work_every, counted.rows = counted.rows, 0
    early = PGD(PGD.Params(**params, early_stop=True))(LogitsObjective(counted, y, 10), x, eps=eps,
                                                        generator=torch.Generator().manual_seed(5))
    work_early = counted.rows
    f_every, f_early = fooled(model, every, y), fooled(model, early, y)
    assert 0.2 < f_every.float().mean() < 0.9  # the attack matters, but not everywhere
    assert bool((f_every <= f_early).all())  # every point the every-point run fools is fooled here
    # a point whose fooled iterate a later step undid counts as fooled here only (none or 1 of 120 here)
    assert int((f_early & ~f_every).sum()) <= 1
    assert torch.equal(early[~f_early], every[~f_early])  # the never-fooled rows ran the same trajectory
    assert (early - x).abs().max() <= eps + 1e-6
    assert work_early < (0.8 if eps < 0.05 else 0.7) * work_every, (work_early, work_every)


def test_early_stop_needs_a_logits_objective():
    model, x, y = setup(4)
    with pytest.raises(ConfigError, match="objective: logits"):
        PGD(PGD.Params(early_stop=True))(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps=0.1)
