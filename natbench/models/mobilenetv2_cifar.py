"""MobileNetV2 in its CIFAR form (32x32 inputs).

Paper: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals
and Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381).

Follows ``models/mobilenetv2.py`` in kuangliu/pytorch-cifar:

* stem: 3x3 conv, 32 channels, **stride 1** (ImageNet: 2) - BN - ReLU;
* inverted-residual blocks, settings (expansion t, channels c, repeats n, stride s):
  (1,16,1,1) (6,24,2,**1**) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1) - the
  second setting's stride is 1 instead of ImageNet's 2, so 32 -> 32 -> 16 -> 8 -> 4;
* block: 1x1 expand (to t * in channels) - BN - ReLU, 3x3 depthwise (stride s) - BN - ReLU,
  1x1 linear projection - BN; with stride 1 the block is residual, and - a quirk of this
  reference, unlike the paper - when its input and output widths differ the shortcut is a
  1x1 conv + BN instead of no shortcut at all (stride-2 blocks have no shortcut);
  the first block (t = 1) keeps its 1x1 "expansion" conv (32 -> 32), which the paper omits;
* head: 1x1 conv 320 -> 1280 - BN - ReLU, global average pooling of the 4x4 map, ``self.linear``.
  (Plain ReLU, not ReLU6, as in the reference.)

``features(x)`` returns the pooled, flattened 1280-d penultimate representation;
``forward(x) == self.linear(self.features(x))``. The final layer is named ``linear``.

Initialisation: as in the reference, PyTorch's default for ``Conv2d``/``Linear``
(Kaiming-uniform, ``a=sqrt(5)``) and BN weight 1 / bias 0.

Parameter count (10 classes, 3 input channels): 2,296,922.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion, out channels, repeats, stride of the first repeat); CIFAR strides.
CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3, stride) - project (1x1, linear)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        hidden = expansion * cin
        self.conv1 = nn.Conv2d(cin, hidden, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, cout, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module | None = None
        if stride == 1:
            self.shortcut = nn.Identity() if cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return y if self.shortcut is None else y + self.shortcut(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 (width multiplier 1)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, cin = [], 32
        for t, c, n, s in CFG:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, t, s if i == 0 else 1))
                cin = c
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(cin, 1280, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.num_features = 1280
        self.linear = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: the 1280-channel head, globally average-pooled, flattened."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.layers(y)
        y = F.relu(self.bn2(self.conv2(y)))
        return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2, CIFAR form."""
    return MobileNetV2(in_channels, num_classes)
