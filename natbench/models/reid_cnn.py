"""A small BatchNorm CNN for person re-identification on small inputs (the ``quick`` profile, CPU).

It has the interface of torchreid's ReID models (``KaiyangZhou/deep-person-reid:
torchreid/models/osnet.py`` and ``resnet.py``): ``featuremaps(x)`` -> ``global_avgpool`` -> flatten
-> ``fc`` (Linear + BatchNorm1d + ReLU, torchreid's ``_construct_fc_layer``) = the embedding, and
``classifier`` (Linear) on the embedding = the identity logits, so the reid task wraps it exactly as
it wraps torchreid's models. Layers: conv3x3(w)-BN-ReLU x2, maxpool 2, conv3x3(2w)-BN-ReLU, maxpool
2, conv3x3(4w)-BN-ReLU, maxpool 2, conv3x3(8w)-BN-ReLU; embedding ``feature_dim`` (default 8w).
``forward`` returns the logits in both train and eval mode (the task calls the pieces anyway).
"""
from __future__ import annotations

from torch import Tensor, nn


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ReIDCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 16, feature_dim: int | None = None, in_channels: int = 3):
        super().__init__()
        w = width
        self.conv = nn.Sequential(
            *_conv(in_channels, w), *_conv(w, w), nn.MaxPool2d(2),
            *_conv(w, 2 * w), nn.MaxPool2d(2),
            *_conv(2 * w, 4 * w), nn.MaxPool2d(2),
            *_conv(4 * w, 8 * w),
        )
        self.feature_dim = feature_dim or 8 * w
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(8 * w, self.feature_dim), nn.BatchNorm1d(self.feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def featuremaps(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def forward(self, x: Tensor) -> Tensor:
        v = self.global_avgpool(self.featuremaps(x)).flatten(1)
        return self.classifier(self.fc(v))
