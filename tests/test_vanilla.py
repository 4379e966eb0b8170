"""Vanilla training (natbench.defenses.vanilla): its loss is plain cross-entropy (float64, by hand)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from natbench.defenses.vanilla import Vanilla

from helpers import TaskSlice, bn_net, softmax


def _ce(z, y):
    return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


def test_vanilla_is_plain_ce(batch):
    model = bn_net(0).eval()
    out = Vanilla().loss(model, batch, TaskSlice(eps=0.3, steps=3, step_size=0.1), {})
    with torch.no_grad():
        assert out.loss.item() == pytest.approx(_ce(model(batch.x).numpy(), batch.y.numpy()), rel=1e-12)
