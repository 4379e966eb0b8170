"""Wide residual networks (WRN-34-10, WRN-28-10) as used by the adversarial-training literature.

Paper: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146).

Follows ``models/wideresnet.py`` of the TRADES repository (yaodongyu/TRADES; the same file is used
by MART and AWP), with ``dropRate = 0``:

* stem: a single 3x3 conv, 16 channels, stride 1, no bias (no BN/ReLU, no max-pool);
* three groups of ``n = (depth - 4) / 6`` pre-activation basic blocks with
  ``16k / 32k / 64k`` channels (``k = widen_factor``) and strides 1 / 2 / 2 (32 -> 32 -> 16 -> 8);
* block (the reference's ``equalInOut`` logic): when input and output widths are equal, the
  residual branch is BN-ReLU-conv3x3-BN-ReLU-conv3x3 and the shortcut is the *raw* input; when
  they differ (first block of each group), the input is replaced by BN-ReLU(input) and both
  the residual branch's first conv and the 1x1-conv shortcut (stride, no bias) read that
  pre-activated tensor;
* head: BN-ReLU, global average pooling of the 8x8 map, classifier ``self.fc``.

Difference from the reference file: it also builds a ``sub_block1`` (a copy of the first group)
that ``forward`` never uses; it has no effect on outputs or training, and it is left out here.
So ``sum(p.numel())`` here is the functional count, 46,160,474 for WRN-34-10 (the reference
module reports 48,262,586 because of the dead ``sub_block1``, 2,102,112 parameters) and
36,479,194 for WRN-28-10 (reference module: 38,119,866). To load a reference checkpoint, drop its
``sub_block1.*`` keys; all other names (``conv1``, ``block1.layer.0.bn1`` ..., ``bn1``, ``fc``)
match the reference.

``features(x)`` returns the pooled, flattened ``64k``-d penultimate representation (640 for
widen 10); ``forward(x) == self.fc(self.features(x))``. The final layer is named ``fc``.

Initialisation as in the reference: convs ``N(0, 2 / (k*k*out_channels))`` (Kaiming-normal,
fan-out, ReLU gain), BN weight 1 / bias 0, ``fc`` bias 0 (``fc`` weight: PyTorch default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Pre-activation WRN block with the reference's ``equalInOut`` shortcut handling."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = cin == cout
        if self.equalInOut and stride != 1:
            raise ValueError("WideResNet block: an identity shortcut cannot change the resolution")
        self.convShortcut = None if self.equalInOut else nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        y = self.relu2(self.bn2(self.conv1(a)))
        if self.droprate > 0:
            y = F.dropout(y, p=self.droprate, training=self.training)
        y = self.conv2(y)
        skip = x if self.equalInOut else self.convShortcut(a)
        return skip + y


class NetworkBlock(nn.Module):
    """A group of ``n`` blocks; the first one carries the stride and the width change."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate) for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs (``depth = 6n + 4``)."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, in_channels: int = 3, num_classes: int = 10,
                 drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.num_features = self.nChannels = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: BN-ReLU of ``block3``, globally average-pooled, flattened."""
        y = self.block3(self.block2(self.block1(self.conv1(x))))
        y = self.relu(self.bn1(y))
        return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def wrn34_10(in_channels: int = 3, num_classes: int = 10) -> WideResNet:
    """WRN-34-10 (depth 34, widen factor 10, no dropout): the TRADES/MART/AWP model."""
    return WideResNet(34, 10, in_channels, num_classes)


def wrn28_10(in_channels: int = 3, num_classes: int = 10) -> WideResNet:
    """WRN-28-10 (depth 28, widen factor 10, no dropout)."""
    return WideResNet(28, 10, in_channels, num_classes)
