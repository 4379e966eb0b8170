"""The detection model: :class:`DetectionNet` over a torchvision SSD or natbench's ``ssd_tiny`` (the package docstring)."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data.voc import VOC_CLASSES

NUM_CLASSES = len(VOC_CLASSES) + 1
#: architecture -> its fixed input size (None: any, from data.image_size)
ARCHS: dict[str, int | None] = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320, "ssd_tiny": None}


class DetectionNet(nn.Module):
    """torchvision ``SSD`` without its mode-dependent ``forward`` (see the module docstring)."""

    def __init__(self, ssd: nn.Module):
        super().__init__()
        self.ssd = ssd
        self._anchor_cache: dict[tuple, Tensor] = {}

    @property
    def size(self) -> tuple[int, int]:
        """The fixed input size ``(h, w)`` of the model's transform."""
        fixed = self.ssd.transform.fixed_size  # (w, h) as torchvision stores it
        return int(fixed[1]), int(fixed[0])

    def preprocess(self, x: Tensor) -> Tensor:
        """``GeneralizedRCNNTransform``'s normalise + fixed-size bilinear resize, on a stacked batch."""
        t = self.ssd.transform
        mean = torch.as_tensor(t.image_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(t.image_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        z = (x - mean) / std
        if tuple(z.shape[-2:]) != self.size:
            z = F.interpolate(z, size=list(self.size), mode="bilinear", align_corners=False)
        return z

    def head(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(cls_logits (B, A, C), bbox_regression (B, A, 4), anchors (A, 4))`` of images ``x`` in [0, 1];
        the anchors (default boxes) are in the model's input pixels, the same for every image."""
        images = self.preprocess(x)
        feats = self.ssd.backbone(images)
        feats = list(feats.values()) if isinstance(feats, dict) else [feats]
        out = self.ssd.head(feats)
        return out["cls_logits"], out["bbox_regression"], self.anchors_for(images, feats)

    def anchors_for(self, images: Tensor, feats: Sequence[Tensor]) -> Tensor:
        from torchvision.models.detection.image_list import ImageList

        key = (tuple(images.shape[-2:]), tuple(tuple(f.shape[-2:]) for f in feats), images.device, images.dtype)
        a = self._anchor_cache.get(key)
        if a is None:
            h, w = images.shape[-2:]
            a = self.ssd.anchor_generator(ImageList(images[:1], [(int(h), int(w))]), [f[:1] for f in feats])[0]
            self._anchor_cache[key] = a.detach()
        return a

    def detect(self, x: Tensor, orig_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        """Detections ``[{"boxes", "scores", "labels"}]`` of torchvision's post-processing, boxes in the
        pixels of ``orig_sizes`` (default: the size of ``x``)."""
        cls_logits, bbox, anchors = self.head(x)
        size = self.size
        dets = self.ssd.postprocess_detections({"cls_logits": cls_logits, "bbox_regression": bbox},
                                               [anchors] * len(x), [size] * len(x))
        if orig_sizes is None:
            orig_sizes = [tuple(x.shape[-2:])] * len(x)
        return self.ssd.transform.postprocess(dets, [size] * len(x), [tuple(int(v) for v in s) for s in orig_sizes])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        cls_logits, bbox, _ = self.head(x)
        return {"cls_logits": cls_logits, "bbox_regression": bbox}


def detection_net(model: nn.Module) -> DetectionNet:
    """``model`` itself when it is a :class:`DetectionNet`, else a TypeError."""
    if not isinstance(model, DetectionNet):
        raise TypeError(f"{type(model).__name__} is not a detection model; build it with DetectionTask.build_model")
    return model


def build_ssd(arch: str, size: int, width: int, mean: Sequence[float], std: Sequence[float], **post) -> nn.Module:
    """A torchvision SSD (``weights=None, weights_backbone=None``) or natbench's ``ssd_tiny``."""
    kwargs = {"image_mean": list(mean), "image_std": list(std), **{k: v for k, v in post.items() if v is not None}}
    if arch == "ssd_tiny":
        from ...models.ssd_tiny import ssd_tiny

        return ssd_tiny(NUM_CLASSES, size, width, **kwargs)
    from torchvision.models import detection

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **kwargs)
