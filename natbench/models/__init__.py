"""Architectures not provided by timm / torchreid / torchvision, and :func:`build` for all of them."""
from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, so models take inputs in [0, 1] (DESIGN conventions)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build(cfg) -> nn.Module:
    """Build ``Normalize -> network`` from a :class:`natbench.taskspec.ModelCfg` (never pretrained)."""
    from ..errors import ConfigError

    if cfg.arch == "small_cnn":
        from .small_cnn import SmallCNN

        net = SmallCNN(cfg.in_channels, cfg.num_classes, cfg.width)
    else:
        import timm

        if not timm.is_model(cfg.arch):
            from ..errors import suggest

            raise ConfigError(f"model.arch: unknown architecture '{cfg.arch}'.{suggest(cfg.arch, ['small_cnn', *timm.list_models()])}")
        net = timm.create_model(cfg.arch, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_channels)
    if len(cfg.mean) != cfg.in_channels or len(cfg.std) != cfg.in_channels:
        raise ConfigError(f"model.mean/std: need {cfg.in_channels} values each (one per input channel)")
    return nn.Sequential(Normalize(cfg.mean, cfg.std), net)
