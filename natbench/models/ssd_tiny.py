"""A small SSD for CPU runs (the ``quick`` profile of ``voc_detection``): natbench's BatchNorm backbone
under torchvision's own SSD machinery (``torchvision.models.detection.ssd.SSD``: its head, default-box
generator, SSDMatcher, box coder, losses and post-processing).

Why not SSDlite320-MobileNetV3: on one CPU core a forward+backward of SSDlite on a batch of 8 at
320x320 takes ~1.9 s (this model at 96x96: ~0.05 s), and MTD needs ~10 of them per training step; the quick profile must train
three defenses and run DAG (up to 150 iterations) in minutes. This backbone at 96x96 is ~35x cheaper
and still has what makes SSD's attacks and MTD's BatchNorm choice meaningful: several feature maps
(strides 8, 16, 32 and a last one of 1-2 cells) with default boxes of several scales and aspect
ratios, and BatchNorm layers (as SSDlite; SSD300-VGG16 has none).

Backbone (``width`` = w): conv3x3 s2 (w) -> conv3x3 s2 (2w) -> conv3x3 (2w) -> conv3x3 s2 (4w) ->
conv3x3 (4w) = map 1 (stride 8) -> conv3x3 s2 (6w) = map 2 (stride 16) -> conv3x3 s2 (6w) = map 3
(stride 32) -> conv3x3 valid (6w) = map 4; Conv-BN-ReLU except the last (Conv-ReLU: a 1x1 map has
one value per channel, and train-mode BatchNorm cannot normalise a batch of one such image).
Default boxes: torchvision's ``DefaultBoxGenerator(aspect_ratios=[[2], [2, 3], [2, 3], [2]], min_ratio=0.15, max_ratio=0.9)``
(SSD's scheme: 4 or 6 boxes per cell, scales 0.15 .. 0.9 of the image side). At 96x96: maps of
12x12, 6x6, 3x3, 1x1 and 12*12*4 + 6*6*6 + 3*3*6 + 1*4 = 850 default boxes.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import Tensor, nn


def _cbr(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinySSDBackbone(nn.Module):
    """Four feature maps (an ``OrderedDict``, as torchvision's SSD backbones return) and ``out_channels``."""

    def __init__(self, width: int = 16, in_channels: int = 3):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_cbr(in_channels, w, 2), _cbr(w, 2 * w, 2), _cbr(2 * w, 2 * w),
                                  _cbr(2 * w, 4 * w, 2), _cbr(4 * w, 4 * w))
        last = nn.Sequential(nn.Conv2d(6 * w, 6 * w, 3), nn.ReLU(inplace=True))  # no BN: 1 cell (batch-1 train BN)
        self.extra = nn.ModuleList([_cbr(4 * w, 6 * w, 2), _cbr(6 * w, 6 * w, 2), last])
        self.out_channels = [4 * w, 6 * w, 6 * w, 6 * w]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        out = OrderedDict()
        x = self.stem(x)
        out["0"] = x
        for i, layer in enumerate(self.extra, start=1):
            x = layer(x)
            out[str(i)] = x
        return out


def ssd_tiny(num_classes: int = 21, size: int = 96, width: int = 16, image_mean: Sequence[float] | None = None,
             image_std: Sequence[float] | None = None, **kwargs) -> nn.Module:
    """torchvision ``SSD`` with :class:`TinySSDBackbone`; ``kwargs`` go to ``SSD`` (score_thresh, ...)."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    if size < 64:
        raise ValueError(f"ssd_tiny needs an input size >= 64 (four feature maps), got {size}")
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2]], min_ratio=0.15, max_ratio=0.9)
    defaults = {"score_thresh": 0.01, "nms_thresh": 0.45, "detections_per_img": 200, "topk_candidates": 400}
    model = SSD(TinySSDBackbone(width), anchors, (size, size), num_classes,
                image_mean=list(image_mean) if image_mean is not None else None,
                image_std=list(image_std) if image_std is not None else None, **{**defaults, **kwargs})
    for m in model.backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


__all__ = ["TinySSDBackbone", "ssd_tiny"]
