"""DenseNet-121 in its CIFAR form (32x32 inputs).

Paper: G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected Convolutional
Networks", CVPR 2017 (arXiv:1608.06993).

Follows ``models/densenet.py`` (``DenseNet121``) in kuangliu/pytorch-cifar:

* stem: a single 3x3 conv to ``2 * growth = 64`` channels, stride 1, no bias (no BN/ReLU, no 7x7
  conv, no max-pool);
* four dense blocks of 6 / 12 / 24 / 16 bottleneck layers (growth rate 32); a bottleneck layer
  is BN-ReLU-conv1x1(4 * growth)-BN-ReLU-conv3x3(growth), and its output is concatenated in
  front of its input (``cat([new, x])``);
* between dense blocks, transitions BN-ReLU-conv1x1 (compression 0.5, ``floor``) - 2x2 average
  pooling (32 -> 16 -> 8 -> 4);
* head: BN-ReLU, global average pooling of the 4x4 map, ``self.linear`` (1024 -> classes).

``features(x)`` returns the pooled, flattened 1024-d penultimate representation;
``forward(x) == self.linear(self.features(x))``. The final layer is named ``linear``.

Initialisation: as in the reference, PyTorch's default for ``Conv2d``/``Linear``
(Kaiming-uniform, ``a=sqrt(5)``) and BN weight 1 / bias 0.

Parameter count (10 classes, 3 input channels): 6,956,298.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(4g)-BN-ReLU-conv3x3(g); returns ``cat([new, x])``."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return torch.cat([y, x], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC with four dense blocks."""

    def __init__(self, layers: tuple[int, int, int, int], growth: int = 32, reduction: float = 0.5,
                 in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, kernel_size=3, padding=1, bias=False)
        for i, n in enumerate(layers, start=1):
            dense = []
            for _ in range(n):
                dense.append(DenseLayer(c, growth))
                c += growth
            setattr(self, f"dense{i}", nn.Sequential(*dense))
            if i < len(layers):
                out = int(math.floor(c * reduction))
                setattr(self, f"trans{i}", Transition(c, out))
                c = out
        self.bn = nn.BatchNorm2d(c)
        self.num_features = c
        self.linear = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: BN-ReLU of the last dense block, average-pooled, flattened."""
        y = self.conv1(x)
        y = self.trans1(self.dense1(y))
        y = self.trans2(self.dense2(y))
        y = self.trans3(self.dense3(y))
        y = F.relu(self.bn(self.dense4(y)))
        return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def densenet121(in_channels: int = 3, num_classes: int = 10) -> DenseNet:
    """DenseNet-121, CIFAR form (growth 32, blocks 6/12/24/16)."""
    return DenseNet((6, 12, 24, 16), 32, 0.5, in_channels, num_classes)
