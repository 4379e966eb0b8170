"""An "outside" model for ``natbench eval --model examples/digits_cnn.py:build`` (docs/external.md).

A small LeNet-style CNN for the 8x8 grey digits, written without natbench: it expects normalised
inputs ``(x - 0.3) / 0.4`` (so evaluate it with ``--normalize 0.3,0.4``) and returns logits (B, 10).
Weights: ``python examples/train_digits_cnn.py --out digits_cnn.pt`` (PGD adversarial training).
"""
from __future__ import annotations

from torch import nn


class DigitsNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
            nn.Flatten(), nn.Linear(128 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.body(x)


def build(num_classes: int = 10) -> nn.Module:
    return DigitsNet(num_classes)
