"""The re-id model: :class:`ReIDNet` over a torchreid backbone or natbench's ``reid_cnn`` (the package docstring)."""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

from torch import Tensor, nn

from ...errors import ConfigError, suggest
from ...registry import load_target

NATBENCH_ARCHS = {"reid_cnn": "natbench.models.reid_cnn:ReIDCNN"}
TORCHREID_PREFIX = "torchreid:"
MODEL_PIECES = ("featuremaps", "global_avgpool", "fc", "classifier")


class ReIDNet(nn.Module):
    """``Normalize -> backbone``: ``forward(x)`` = identity logits, ``features(x)`` = the embedding,
    whatever ``self.training`` is (the backbone's own mode-dependent ``forward`` is never called)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        from ...models import Normalize

        missing = [a for a in MODEL_PIECES if not hasattr(net, a)]
        if missing:
            raise ConfigError(f"model.arch: {type(net).__name__} lacks {', '.join(missing)}; the reid task needs "
                              f"torchreid's featuremaps/global_avgpool/fc/classifier structure (e.g. resnet50, osnet_x1_0)")
        self.normalize = Normalize(mean, std)
        self.net = net

    def features(self, x: Tensor) -> Tensor:
        net = self.net
        v = net.global_avgpool(net.featuremaps(self.normalize(x)))
        v = v.view(v.size(0), -1)
        return v if net.fc is None else net.fc(v)

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = self.features(x)
        return self.net.classifier(v), v

    def forward(self, x: Tensor) -> Tensor:
        return self.net.classifier(self.features(x))


def torchreid_models() -> dict[str, Callable]:
    """torchreid's model factory (imports torchreid: a few seconds, warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid import models
    return dict(models.__dict__["__model_factory"])


def build_backbone(arch: str, num_classes: int, width: int = 16) -> nn.Module:
    """A torchreid model (``pretrained=False``) or natbench's ``reid_cnn``."""
    if arch in NATBENCH_ARCHS:
        return load_target(NATBENCH_ARCHS[arch])(num_classes, width=width)
    name = arch.removeprefix(TORCHREID_PREFIX)
    try:
        factory = torchreid_models()
    except ImportError as e:  # torchreid (PyPI 0.2.5) also needs tensorboard and gdown at import
        raise ConfigError(f"model.arch '{arch}': torchreid cannot be imported ({e}); pip install torchreid "
                          f"opencv-python-headless gdown tensorboard, or use model.arch=reid_cnn") from None
    if name not in factory:
        raise ConfigError(f"model.arch: unknown re-id architecture '{arch}'.{suggest(name, [*NATBENCH_ARCHS, *factory])} "
                          f"Available: {', '.join([*NATBENCH_ARCHS, *factory])}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory[name](num_classes=num_classes, loss="softmax", pretrained=False, use_gpu=False)


def _logits_and_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    both = getattr(model, "logits_and_features", None)
    if both is None:
        raise TypeError(f"{type(model).__name__} is not a re-id model (no logits_and_features); build it with ReIDTask.build_model")
    return both(x)


def _features(model: nn.Module, x: Tensor) -> Tensor:
    return model.features(x)
