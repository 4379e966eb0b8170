"""Architectures not provided by timm / torchreid / torchvision, and :func:`build` for all of them.

``ARCHS`` maps natbench architecture names to lazy ``"module:callable"`` constructors (loaded with
:func:`natbench.registry.load_target`, so nothing heavy is imported until a name is built). The
CIFAR models (32x32 inputs, 3x3 stem, no initial max-pool) are the ones of the adversarial-training
literature; each file's docstring names its paper and reference implementation. Every one has a
``features(x)`` method (penultimate representation) and a final ``nn.Linear``: ``fc`` for
``small_cnn`` and the WideResNets, ``linear`` for the others (see :func:`classifier`).

Constructors take ``(in_channels, num_classes)``; ``small_cnn`` also takes ``width``. A name not in
``ARCHS`` is a timm model name, built with ``pretrained=False``; ``timm:<name>`` forces timm for a
name that ``ARCHS`` shadows (e.g. ``timm:resnet18`` is timm's ImageNet-stem ResNet-18).
"""
from __future__ import annotations

import torch
from torch import nn

ARCHS: dict[str, str] = {
    "small_cnn": "natbench.models.small_cnn:SmallCNN",
    "resnet18": "natbench.models.resnet_cifar:resnet18",
    "resnet50": "natbench.models.resnet_cifar:resnet50",
    "preact_resnet18": "natbench.models.preact_resnet:preact_resnet18",
    "wrn34_10": "natbench.models.wide_resnet:wrn34_10",
    "wrn28_10": "natbench.models.wide_resnet:wrn28_10",
    "mobilenetv2": "natbench.models.mobilenetv2_cifar:mobilenetv2",
    "densenet121": "natbench.models.densenet_cifar:densenet121",
    "vgg11": "natbench.models.vgg_cifar:vgg11",
}
TIMM_PREFIX = "timm:"


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

    arch = cfg.arch
    timm_name = None
    if arch not in ARCHS:
        import timm

        timm_name = arch[len(TIMM_PREFIX):] if arch.startswith(TIMM_PREFIX) else arch
        if not timm.is_model(timm_name):
            from ..errors import suggest

            raise ConfigError(f"model.arch: unknown architecture '{arch}'.{suggest(timm_name, [*ARCHS, *timm.list_models()])}")
    if len(cfg.mean) != cfg.in_channels or len(cfg.std) != cfg.in_channels:
        raise ConfigError(f"model.mean/std: need {cfg.in_channels} values each (one per input channel)")
    if timm_name is None:
        from ..registry import load_target

        ctor = load_target(ARCHS[arch])
        if arch == "small_cnn":
            net = ctor(cfg.in_channels, cfg.num_classes, cfg.width)
        else:
            net = ctor(cfg.in_channels, cfg.num_classes)
    else:
        import timm

        net = timm.create_model(timm_name, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_channels)
    return nn.Sequential(Normalize(cfg.mean, cfg.std), net)


def classifier(model: nn.Module) -> nn.Linear:
    """The final linear layer (class weight vectors) of a built model or a bare network.

    Looks through the ``Normalize -> network`` wrapper of :func:`build`; natbench networks name it
    ``fc`` or ``linear``, timm networks are asked with ``get_classifier()``.
    """
    net = model[-1] if isinstance(model, nn.Sequential) and isinstance(model[0], Normalize) else model
    for attr in ("fc", "linear"):
        layer = getattr(net, attr, None)
        if isinstance(layer, nn.Linear):
            return layer
    get = getattr(net, "get_classifier", None)
    layer = get() if callable(get) else None
    if isinstance(layer, nn.Linear):
        return layer
    raise TypeError(f"{type(net).__name__} has no final nn.Linear named fc or linear")
