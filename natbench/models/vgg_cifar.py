"""VGG-11 with batch normalisation in its CIFAR form (32x32 inputs).

Paper: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv:1409.1556); BN after every conv as in the common "VGG-BN" variant.

Follows ``models/vgg.py`` (``VGG('VGG11')``) in kuangliu/pytorch-cifar:

* configuration A: 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M - every number a
  3x3 conv (padding 1, *with* bias) - BN - ReLU, every M a 2x2 max-pool; five pools take
  32x32 to 1x1;
* no 4096-wide fully connected layers: a single linear classifier 512 -> classes.

Difference from the reference: its classifier is called ``classifier``; here it is
``self.linear`` so that every CIFAR model in natbench exposes ``linear`` or ``fc``. (The
reference's trailing ``AvgPool2d(1, 1)`` is a no-op and is left out.)

``features(x)`` returns the flattened 512-d output of the conv stack (``self.body``);
``forward(x) == self.linear(self.features(x))``.

Initialisation: as in the reference, PyTorch's default for ``Conv2d``/``Linear``
(Kaiming-uniform, ``a=sqrt(5)``) and BN weight 1 / bias 0.

Parameter count (10 classes, 3 input channels): 9,231,114.
"""
from __future__ import annotations

import torch
from torch import nn

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """VGG-BN conv stack for 32x32 inputs followed by one linear layer."""

    def __init__(self, cfg=VGG11, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.body = nn.Sequential(*layers)
        self.num_features = c
        self.linear = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation: the conv stack's output (1x1 for 32x32 inputs), flattened.

        Inputs larger than 32x32 are globally average-pooled first, so the width stays 512.
        """
        y = self.body(x)
        if y.shape[-2:] != (1, 1):
            y = torch.nn.functional.adaptive_avg_pool2d(y, 1)
        return torch.flatten(y, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def vgg11(in_channels: int = 3, num_classes: int = 10) -> VGG:
    """VGG-11 with BN, CIFAR form."""
    return VGG(VGG11, in_channels, num_classes)
