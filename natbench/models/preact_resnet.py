"""PreActResNet-18 in its CIFAR form (32x32 inputs).

Paper: K. He, X. Zhang, S. Ren, J. Sun, "Identity Mappings in Deep Residual Networks",
ECCV 2016 (arXiv:1603.05027).

Follows the layout of ``models/preact_resnet.py`` in kuangliu/pytorch-cifar, the PreActResNet-18
of the adversarial-training literature (Rice et al. "Overfitting in adversarially robust deep
learning", Wong et al. "Fast is better than free", AWP):

* stem: a single 3x3 conv (stride 1, 64 channels, no bias) - no BN/ReLU after it (the first block
  pre-activates), no max-pool;
* four stages of two pre-activation blocks, 64/128/256/512 planes, strides 1/2/2/2;
* block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus a shortcut; where the shape changes the
  shortcut is a bare 1x1 conv (stride, no bias, no BN) applied to the *pre-activated* input,
  otherwise it is the raw input;
* the reference ends without a final BN-ReLU: global average pooling of the last block's sum
  (4x4 map), then the classifier ``self.linear``.

``features(x)`` returns the pooled, flattened 512-d penultimate representation;
``forward(x) == self.linear(self.features(x))``. The final layer is named ``linear``.

Initialisation: as in the reference, PyTorch's default for ``Conv2d``/``Linear``
(Kaiming-uniform, ``a=sqrt(5)``) and BN weight 1 / bias 0.

Parameter count (10 classes, 3 input channels): 11,171,146.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        y = self.conv1(a)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + skip


class PreActResNet(nn.Module):
    """CIFAR pre-activation ResNet: 3x3 stem conv, four stages, GAP, ``linear``."""

    def __init__(self, num_blocks: list[int], in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        cin = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = cin
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: globally average-pooled output of ``layer4``, flattened."""
        y = self.conv1(x)
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def preact_resnet18(in_channels: int = 3, num_classes: int = 10) -> PreActResNet:
    """PreActResNet-18, CIFAR form ([2, 2, 2, 2] pre-activation basic blocks)."""
    return PreActResNet([2, 2, 2, 2], in_channels, num_classes)
