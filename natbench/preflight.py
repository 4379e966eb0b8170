"""Checks of a run's model against its task and data that must pass before the run directory is
created (``model.arch=resnet9999``, ``model.in_channels=3`` on one-channel digits,
``model.num_classes=3`` on ten-class data): each is one :class:`~natbench.errors.ConfigError`
line instead of a crash during training with a half-written run folder.

- :func:`check_model_cfg` (at resolve time, no data): the architecture exists (a natbench name, or a
  timm name: timm is imported only for those) and ``mean``/``std`` give one value per input channel.
- :func:`check_fits_data` (the classification task's ``check_data``, once the data is read): the
  images have ``in_channels`` channels and every label is below ``num_classes``.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError, suggest


def check_model_cfg(model: Any, where: str = "model") -> None:
    from .models import ARCHS, TIMM_PREFIX

    arch = model.arch
    if arch not in ARCHS:
        try:
            import timm
        except ImportError:  # pragma: no cover - timm is a dependency
            raise ConfigError(f"{where}.arch: unknown architecture '{arch}'.{suggest(arch, ARCHS)} "
                              f"Available: {', '.join(ARCHS)}") from None
        name = arch[len(TIMM_PREFIX):] if arch.startswith(TIMM_PREFIX) else arch
        if not timm.is_model(name):
            raise ConfigError(f"{where}.arch: unknown architecture '{arch}'.{suggest(name, [*ARCHS, *timm.list_models()])} "
                              f"Use a natbench name ({', '.join(ARCHS)}) or a timm model name")
    if len(model.mean) != model.in_channels or len(model.std) != model.in_channels:
        ex = ",".join(["0.5"] * max(1, min(model.in_channels, 4)))
        raise ConfigError(f"{where}: in_channels is {model.in_channels} but mean/std give {len(model.mean)}/{len(model.std)} "
                          f"values; give one per input channel, e.g. --set model.mean=[{ex}] --set model.std=[{ex}]")


def check_fits_data(model: Any, dataset: str, channels: int | None, labels: torch.Tensor, where: str = "model") -> None:
    """The data's channel count and labels against ``model`` (a ModelCfg)."""
    if channels is not None and channels != model.in_channels:
        raise ConfigError(f"{where}.in_channels: {model.in_channels}, but the {dataset} images have {channels} channel(s); "
                          f"set model.in_channels={channels} (with {channels} mean/std values)")
    if len(labels):
        top = int(labels.max())
        if top >= model.num_classes or int(labels.min()) < 0:
            raise ConfigError(f"{where}.num_classes: {model.num_classes}, but {dataset} has labels 0..{top}; "
                              f"set model.num_classes={top + 1} or more")
