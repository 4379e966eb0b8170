"""ResNet-18 / ResNet-50 in their CIFAR form (32x32 inputs).

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016 (arXiv:1512.03385).

Follows the layout of ``models/resnet.py`` in kuangliu/pytorch-cifar, the ResNet used by most of
the adversarial-training literature (PGD-AT/Madry, TRADES, MART, AWP ResNet-18 results):

* stem: one 3x3 conv (stride 1, 64 channels, no bias) - BN - ReLU; no 7x7 conv, no max-pool;
* four stages of 64/128/256/512 planes, strides 1/2/2/2 (32 -> 32 -> 16 -> 8 -> 4);
* post-activation blocks (conv-BN-ReLU-conv-BN, add, ReLU); BasicBlock for ResNet-18 ([2,2,2,2]),
  Bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) for ResNet-50 ([3,4,6,3]); where the shape changes
  the shortcut is a 1x1 conv (stride s, no bias) + BN, otherwise identity;
* global average pooling over the final 4x4 map, then the classifier ``self.linear``.

``features(x)`` returns the pooled, flattened penultimate representation (512 for ResNet-18,
2048 for ResNet-50); ``forward(x) == self.linear(self.features(x))``. The final layer is named
``linear`` (as in the reference).

Initialisation: as in the reference, PyTorch's default for ``Conv2d``/``Linear``
(Kaiming-uniform, ``a=sqrt(5)``) and BN weight 1 / bias 0.

Parameter counts (10 classes, 3 input channels): ResNet-18 11,173,962; ResNet-50 23,520,842.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else 1x1 conv (stride) + BN."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ReLU after the residual addition."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(cin, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4; ReLU after the residual addition."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, four stages (64/128/256/512 planes), GAP, ``linear``."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = cin
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: globally average-pooled output of ``layer4``, flattened."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def resnet18(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-18, CIFAR form (BasicBlock, [2, 2, 2, 2])."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, num_classes)


def resnet50(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-50, CIFAR form (Bottleneck, [3, 4, 6, 3])."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels, num_classes)
