"""Tests for natbench.models: every architecture in ``ARCHS`` (parametrized, timm ``tests/test_models.py``
style) builds, has the reference parameter count, maps (2, 3, 32, 32) to (2, 10), exposes
``features`` + a final ``fc``/``linear``, and passes gradients to its input; ``build`` falls through
to timm (never pretrained) and raises ConfigError on unknown names and mis-sized normalisation.

The two WideResNets' forward/backward passes are ``slow`` (a few seconds each on 2 CPU cores); their
parameter counts are always checked. Batch 2, eval mode throughout.
"""
from __future__ import annotations

import functools
import importlib

import pytest
import torch
from torch import nn

from natbench.errors import ConfigError
from natbench.models import ARCHS, Normalize, build, classifier
from natbench.taskspec import ModelCfg

# Parameter counts (3 input channels, 10 classes) of the reference implementations: kuangliu/pytorch-cifar
# (ResNet-18/50, PreActResNet-18, MobileNetV2, DenseNet-121, VGG-11-BN) and TRADES' wideresnet.py
# (WRN; counted without the unused ``sub_block1`` that file also builds, see wide_resnet.py).
REFERENCE_PARAMS = {
    "resnet18": 11_173_962,
    "preact_resnet18": 11_171_146,
    "wrn34_10": 46_160_474,
    "wrn28_10": 36_479_194,
    "resnet50": 23_520_842,
    "mobilenetv2": 2_296_922,
    "densenet121": 6_956_298,
    "vgg11": 9_231_114,
}
PENULTIMATE = {"resnet18": 512, "preact_resnet18": 512, "wrn34_10": 640, "wrn28_10": 640, "resnet50": 2048,
               "mobilenetv2": 1280, "densenet121": 1024, "vgg11": 512, "small_cnn": 128}
SLOW = {"wrn34_10", "wrn28_10"}
CIFAR_ARCHS = sorted(REFERENCE_PARAMS)


def _arch_params(names):
    return [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in names]


def _cfg(arch: str, in_channels: int = 3, num_classes: int = 10) -> ModelCfg:
    return ModelCfg(arch=arch, num_classes=num_classes, in_channels=in_channels,
                    mean=(0.5,) * in_channels, std=(0.25,) * in_channels)


@functools.lru_cache(maxsize=None)
def _built(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build(_cfg(arch)).eval()


def _x(in_channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(2, in_channels, size, size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------- the table
def test_table_covers_the_cifar_archs():
    assert set(ARCHS) == {"small_cnn", *REFERENCE_PARAMS}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_targets_are_lazy_and_documented(arch):
    module, _, attr = ARCHS[arch].partition(":")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, attr))
    if arch != "small_cnn":  # each CIFAR file cites its paper and the reference implementation it follows
        doc = mod.__doc__ or ""
        assert "arXiv" in doc and ("kuangliu/pytorch-cifar" in doc or "TRADES" in doc)


# ------------------------------------------------------------------------------- per architecture
@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_parameter_count_matches_reference(arch):
    net = _built(arch)
    assert isinstance(net[0], Normalize) and sum(b.numel() for b in net[0].buffers()) == 6  # no parameters
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_PARAMS[arch]


@functools.lru_cache(maxsize=None)
def _logits(arch: str) -> torch.Tensor:
    with torch.no_grad():
        return _built(arch)(_x())


@pytest.mark.parametrize("arch", _arch_params(sorted(ARCHS)))
def test_forward_shape(arch):
    out = _logits(arch)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", _arch_params(sorted(ARCHS)))
def test_features_classifier_and_input_gradients(arch):
    net = _built(arch)
    body, head = net[1], classifier(net)
    assert head is getattr(body, "fc", None) or head is getattr(body, "linear", None)
    assert head.weight.shape == (10, PENULTIMATE[arch])
    x = _x().requires_grad_(True)
    feats = body.features(net[0](x))
    assert feats.shape == (2, PENULTIMATE[arch])
    logits = head(feats)  # forward == head(features)
    torch.testing.assert_close(logits.detach(), _logits(arch))
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)


def test_in_channels_and_num_classes_reach_the_network():
    net = build(_cfg("vgg11", in_channels=1, num_classes=7)).eval()
    with torch.no_grad():
        assert net(_x(in_channels=1)).shape == (2, 7)
    assert classifier(net).out_features == 7


def test_wide_resnet_init_follows_reference():
    wrn = _built("wrn28_10")[1]
    conv = wrn.block3.layer[1].conv2  # 640 -> 640, 3x3: N(0, 2 / (9 * 640))
    assert abs(conv.weight.std().item() - (2 / (9 * 640)) ** 0.5) < 1e-3
    assert torch.all(wrn.fc.bias == 0)
    assert not any("sub_block" in k for k in wrn.state_dict())


def test_wide_resnet_rejects_bad_depth():
    from natbench.models.wide_resnet import WideResNet

    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=30)


# ------------------------------------------------------------------------------- small_cnn is unchanged
def test_small_cnn_default_build_unchanged():
    from natbench.models.small_cnn import SmallCNN

    net = build(ModelCfg(width=8))
    assert isinstance(net, nn.Sequential) and len(net) == 2
    assert isinstance(net[0], Normalize) and isinstance(net[1], SmallCNN)
    assert net[1].fc.in_features == 32 and net[0].mean.shape == (1, 1, 1, 1)
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)


# ------------------------------------------------------------------------------- timm fall-through
def test_timm_name_builds_without_pretrained_weights():
    torch.manual_seed(0)
    net = build(_cfg("resnet10t")).eval()  # not in ARCHS: a timm model, random init
    assert type(net[1]).__module__.startswith("timm.")
    with torch.no_grad():
        assert net(_x()).shape == (2, 10)
    assert classifier(net).out_features == 10


def test_timm_prefix_reaches_a_shadowed_name():
    net = build(_cfg("timm:resnet18", in_channels=1, num_classes=5))
    assert type(net[1]).__module__.startswith("timm.")
    assert net[1].conv1.kernel_size == (7, 7) and net[1].conv1.in_channels == 1  # the ImageNet stem
    assert classifier(net).out_features == 5
    assert type(build(_cfg("resnet18"))[1]).__module__ == "natbench.models.resnet_cifar"


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("arch", "suggestion"), [("resnet_18", "resnet18"), ("wrn34-10", "wrn34_10"),
                                                  ("preact_resnet_18", "preact_resnet18"), ("timm:resnt18", "resnet18")])
def test_unknown_arch_is_a_config_error_with_suggestion(arch, suggestion):
    with pytest.raises(ConfigError, match="unknown architecture") as err:
        build(_cfg(arch))
    assert "Did you mean" in str(err.value) and suggestion in str(err.value)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "resnet10t"])
def test_normalize_with_wrong_channel_count_is_a_config_error(arch):
    with pytest.raises(ConfigError, match="model.mean/std"):
        build(ModelCfg(arch=arch, in_channels=3, mean=(0.5,), std=(0.5,)))
    with pytest.raises(ConfigError, match="model.mean/std"):
        build(ModelCfg(arch=arch, in_channels=3, mean=(0.5,) * 3, std=(0.5, 0.5)))


def test_classifier_rejects_a_network_without_a_linear_head():
    with pytest.raises(TypeError, match="fc or linear"):
        classifier(nn.Sequential(Normalize((0.5,), (0.5,)), nn.Conv2d(1, 1, 1)))
