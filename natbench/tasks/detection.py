"""Object detection on PASCAL VOC with torchvision's SSD: per-image SSD losses, matched-anchor logits,
VOC07 mAP, and the objectives of the detection attacks (notes/algorithms.md Sec. 11, formats.md Sec. 4-5).

Capabilities ``{"logits", "detections"}``; headline metric ``mAP`` (VOC2007 11-point AP at IoU 0.5,
difficult objects ignored, a fraction in [0, 1]; also ``mAP_area``, the all-point VOC2010+ AP).

**Model** (``build_model``): :class:`DetectionNet` wraps a ``torchvision.models.detection.SSD`` built
with ``weights=None, weights_backbone=None`` (never a download) and ``num_classes=21`` (label 0 =
background, 1..20 the VOC classes): ``model.arch`` = ``ssd300_vgg16`` (the papers' SSD300, 300x300,
8732 default boxes), ``ssdlite320_mobilenet_v3_large`` (320x320, 3234) or natbench's ``ssd_tiny``
(:mod:`natbench.models.ssd_tiny`: a small BatchNorm backbone under torchvision's SSD head, default
boxes, matcher, box coder and post-processing; the ``quick`` profile, any ``data.image_size`` >= 64).
Inputs are images in [0, 1]; the normalisation (``model.mean``/``model.std``, passed to torchvision's
``GeneralizedRCNNTransform`` as ``image_mean``/``image_std``) and the resize to the model's fixed size
are the model's own: :meth:`DetectionNet.preprocess` applies exactly the transform's operations
(per-channel ``(x - mean) / std``, then a bilinear resize to the fixed size, the identity when the
input already has it) to the stacked batch, without the transform's training-time random size draw.

torchvision's ``SSD.forward`` returns losses in train mode and detections in eval mode; natbench never
calls it. :class:`DetectionNet` calls the pieces (``backbone`` -> ``head`` -> ``anchor_generator``, and
``postprocess_detections`` + ``transform.postprocess`` for detections), so every quantity below is
available in *both* modes, with gradients w.r.t. the input; ``model.training`` only switches BatchNorm
(the caller's choice: eval during evaluation attacks, each defense's ``attack_bn`` during training).
``model(x)`` returns the head outputs ``{"cls_logits": (B, A, 21), "bbox_regression": (B, A, 4)}``.

**Data** (``data.dataset: voc``, :mod:`natbench.data.voc`): VOC07 (+12) trainval for training, VOC07
test for evaluation. ``data.val_fraction`` of the trainval images (drawn with ``data.split_seed``)
are held out for checkpoint selection. Every image is resized to ``data.image_size`` x
``data.image_size`` = the model's fixed input size (300 for SSD300, 320 for SSDlite) in the loader
(PIL bilinear), as SSD's own transform would (it ignores the aspect ratio), so batches stack and the
model's resize is the identity; boxes are scaled with the image. ``data.augment``: ``none`` or
``flip`` (horizontal flip with p = 0.5, drawn from the epoch's generator; SSD's photometric
distortion, zoom-out and IoU-sampled crops are not implemented). Difficult objects are left out of
the training targets (``task.params.train_difficult``; ssd.pytorch's ``keep_difficult=False``, mmdet
ignores them) and kept, flagged, for the evaluation, which ignores them.

``Batch`` layout (every entry a tensor, so ``Batch.to`` moves it): ``x`` (B, 3, S, S); ``extra``:
``boxes`` (B, G, 4) float (S x S pixels, continuous xyxy, zero-padded), ``labels`` (B, G) int64 (0 =
padding), ``difficult`` (B, G) bool, ``num_objects`` (B,), ``orig_size`` (B, 2) = original (h, w),
``matched`` (B, A) int64 = SSD's anchor matching (torchvision's ``SSDMatcher``, IoU >= 0.5 plus
each box's best anchor, on the non-difficult boxes): the index of the box an anchor is matched to, -1
for background; ``pos_anchor`` (B, K) int64 = the matched (positive) anchors of each image in
increasing anchor order, padded with -1 to the batch's largest count K; ``y`` (B, K) int64 = their
class labels, -100 (``cross_entropy``'s ignore index) as padding. The matching depends only on the
boxes and the default boxes (computed once from the architecture at the input size), never on a
model's weights.

**Losses per image** (torchvision's ``SSD.compute_loss``, which only gives the batch total, computed
per image; ``tests/test_det_task.py`` checks the per-image sums against it): for image i with matched
anchors P_i (``n_i = |P_i|``) the localisation sum ``loc_i = sum_{a in P_i} smooth_l1(t_a,
encode(box(a), anchor_a))`` (torchvision's box coder, weights 10, 10, 5, 5; smooth L1 with beta 1) and
the classification sum ``cls_i = sum_{a in P_i} CE(z_a, label(a)) + sum_{a in N_i} CE(z_a, 0)`` with
N_i the ``3 n_i`` background anchors of highest CE (hard-negative mining, neg:pos = 3). torchvision's
batch losses are ``sum_i cls_i / max(1, sum_i n_i)`` and ``sum_i loc_i / max(1, sum_i n_i)``.

- ``training_loss`` (and ``task_loss`` = its first element): per image ``B * (cls_i + loc_i) / max(1,
  sum_j n_j)``, whose batch mean is exactly torchvision's ``classification + bbox_regression``; the
  parts ``cls`` / ``loc`` are torchvision's two batch losses.
- objectives ``det_cls`` / ``det_loc`` / ``det_total`` (attacks, MTD's inner maximisation): per image
  ``cls_i / max(1, n_i)``, ``loc_i / max(1, n_i)`` and their sum: the image's own MultiBoxLoss (what
  RobustDet's per-image evaluation attack maximises), independent of the other images of the batch.
  A positive factor per image does not change a signed or L-inf-normalised gradient step, so the
  attacks do not depend on which of the two normalisations is used.
- objective ``anchors`` (:class:`AnchorObjective`; DAG and RAP): ``x -> (cls_logits (B, A, 21),
  bbox_regression (B, A, 4))`` plus the anchors' target classes (``labels``: the matched box's class,
  0 for background) and the ``positive`` mask.
- objective ``ce``: a classification attack's objective (PGD's, e.g. PGD-AT's inner attack and the
  runner's PGD-5 validation attack) runs on ``det_total``.

**Matched-anchor logits for regularizers** (``logits(model, batch, x)``, NAT's nasty KL): the class
logits of the matched anchors, which are fixed by the ground truth and the default boxes, not by
the model, so two models (NAT's target and its vanilla adversary) give rows that refer to the same
anchors. The layout is **per image, padded**: a ``(B, 21, K)`` tensor whose column k of image i is the
logit vector of its k-th matched anchor (``batch.extra["pos_anchor"]``), zeros in the padded columns
-- the K-dimensional form that ``cross_entropy`` (``(B, C, K)`` vs ``y`` (B, K), padding ignored) and
``log_softmax(dim=1)`` / ``kl_div`` understand, one row per *image* as NAT's adversary forward
requires (it checks that its logits have one row per input image and splits them per input). The
padded columns are zero for both models, so their KL is exactly 0: NAT's ``batchmean`` KL is the
sum of the per-anchor KLs of an image, averaged over the images (not over anchors). ``x`` may hold
k copies' worth of images (NAT's adversary forward on ``cat([x, x'])``): the matched anchors of the
batch are then used for every copy. A model whose default boxes differ from the task's (another
architecture or input size) is refused, since its rows would refer to other anchors.

**Evaluation** (``evaluate``): eval mode, fp32; per batch the attack (objective from its kind, see
above; ``eps`` the threat model's unless given), the eps-ball check, then detections (torchvision's
post-processing: per class score > ``score_thresh``, top-k, NMS; boxes mapped back to the original
image size) and VOC07 mAP over the whole set (:mod:`natbench.analysis.voc_map`). An attack that
exposes ``last_raw`` (DAG: its perturbation before the eps clip) also gives ``mAP_raw`` (mAP on those
images) and ``raw_linf_mean``/``raw_linf_max`` (their L-inf distance to the clean images, [0, 1] units).
``EvalOut.correct``: one flag per test image, "every non-difficult object of the image detected",
i.e. found by a detection of its class with score >= ``task.params.correct_score`` (0.5) and IoU > 0.5
(an image with only difficult objects: no confident detection at all);
:func:`natbench.analysis.voc_map.image_detected`.
"""
from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.voc_map import MODES, image_detected, voc_map
from ..checks import assert_in_ball
from ..config import from_dict
from ..contracts import Batch, EvalOut, Objective
from ..data import READERS
from ..data.voc import HINT as VOC_HINT, VOC_CLASSES, VOCItem, VOCSplits
from ..errors import ConfigError, DataError, suggest
from ..registry import load_target
from ..taskspec import TaskSpec

log = logging.getLogger(__name__)

EVAL_OBJECTIVES = ("det_cls", "det_loc", "det_total", "anchors")
TRAIN_OBJECTIVES = ("ce", *EVAL_OBJECTIVES)
SELECTION_OBJECTIVE = "det_total"  # what a classification attack (objective "ce") runs on
AUGMENTS = ("none", "flip")
NUM_CLASSES = len(VOC_CLASSES) + 1
#: architecture -> its fixed input size (None: any, from data.image_size)
ARCHS: dict[str, int | None] = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320, "ssd_tiny": None}
IGNORE = -100  # cross_entropy's ignore_index: the padding of Batch.y


# ------------------------------------------------------------------------------------------ model
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


def build_ssd(arch: str, size: int, width: int, mean: Sequence[float], std: Sequence[float], **post) -> nn.Module:
    """A torchvision SSD (``weights=None, weights_backbone=None``) or natbench's ``ssd_tiny``."""
    kwargs = {"image_mean": list(mean), "image_std": list(std), **{k: v for k, v in post.items() if v is not None}}
    if arch == "ssd_tiny":
        from ..models.ssd_tiny import ssd_tiny

        return ssd_tiny(NUM_CLASSES, size, width, **kwargs)
    from torchvision.models import detection

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(detection, arch)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **kwargs)


# ------------------------------------------------------------------------------------------ losses
def multibox_sums(cls_logits: Tensor, bbox_regression: Tensor, anchors: Tensor, boxes: Tensor, labels: Tensor,
                  matched: Tensor, box_coder: Any, neg_to_pos: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(cls_i, loc_i, n_i)`` per image: torchvision ``SSD.compute_loss``'s sums before its division
    by the batch's foreground count (the module docstring). ``boxes``/``labels``: (B, G, 4) / (B, G)
    ground truth in the model's input pixels; ``matched``: (B, A) box index per anchor, -1 background."""
    b, a, c = cls_logits.shape
    fg = matched >= 0
    idx = matched.clamp(min=0)
    target_cls = torch.where(fg, labels.gather(1, idx), torch.zeros_like(idx))
    bi, ai = fg.nonzero(as_tuple=True)
    target_reg = box_coder.encode_single(boxes[bi, idx[bi, ai]], anchors[ai])
    each = F.smooth_l1_loss(bbox_regression[bi, ai], target_reg, reduction="none").sum(dim=1)
    loc = each.new_zeros(b).index_add(0, bi, each)  # the dtype of the loss (float32 under bf16 autocast)
    ce = F.cross_entropy(cls_logits.reshape(-1, c), target_cls.reshape(-1), reduction="none").view(b, a)
    num_negative = neg_to_pos * fg.sum(dim=1, keepdim=True)
    negative = ce.detach().clone()
    negative[fg] = -float("inf")
    _, order = negative.sort(dim=1, descending=True)
    hard = order.sort(dim=1)[1] < num_negative
    zero = ce.new_zeros(())
    cls = torch.where(fg, ce, zero).sum(dim=1) + torch.where(hard, ce, zero).sum(dim=1)
    return cls, loc, fg.sum(dim=1)


class AnchorObjective:
    """Objective kind ``"anchors"``: ``x' -> (cls_logits (B, A, C), bbox_regression (B, A, 4))``,
    differentiable in ``x'``; ``labels`` (B, A) = each anchor's target class (its matched box's class,
    0 = background), ``positive`` (B, A) = matched anchors, ``num_classes`` = C (background included).
    The attack never sees the model (so it cannot change its mode); each row depends on its own image only."""

    def __init__(self, fn: Callable[[Tensor], tuple[Tensor, Tensor]], labels: Tensor, positive: Tensor, num_classes: int):
        self.fn, self.labels, self.positive, self.num_classes = fn, labels, positive, int(num_classes)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fn(x)


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class AnchorSpec:
    """The default boxes of the task's architecture at its input size, and torchvision's matcher."""

    anchors: Tensor  # (A, 4) in input pixels
    matcher: Any  # torchvision det_utils.SSDMatcher


def match_anchors(spec: AnchorSpec, boxes: Tensor, keep: Tensor) -> Tensor:
    """(A,) index of the box each anchor is matched to (-1: background), matching only ``boxes[keep]``
    (torchvision's ``box_iou`` + ``SSDMatcher``, as ``SSD.forward`` does; no box: all -1)."""
    from torchvision.ops import box_iou

    a = spec.anchors
    kept = keep.nonzero().flatten()
    if len(kept) == 0:
        return torch.full((len(a),), -1, dtype=torch.int64)
    m = spec.matcher(box_iou(boxes[kept], a))
    return torch.where(m >= 0, kept[m.clamp(min=0)], torch.full_like(m, -1))


class VOCLoader:
    """Batches of VOC images resized to ``size`` x ``size``, with their targets and anchor matching.

    Shuffling and flips are drawn from ``generator`` in the calling thread before any decoding, so the
    batches do not depend on ``num_workers`` (decode threads); ``len()`` before iterating sees the
    same plan as the iteration.
    """

    def __init__(self, items: Sequence[VOCItem], batch_size: int, size: int, anchors: AnchorSpec, split: str, *,
                 augment: str = "none", shuffle: bool = False, generator: torch.Generator | None = None,
                 train_difficult: bool = False, num_workers: int = 0, hint: str = VOC_HINT):
        self.items, self.batch_size, self.size, self.anchors, self.split = list(items), batch_size, size, anchors, split
        self.augment, self.shuffle, self.generator = augment, shuffle, generator
        self.train_difficult, self.num_workers, self.hint = train_difficult, num_workers, hint
        self._plan: tuple[list[list[int]], Tensor | None] | None = None

    def _draw(self) -> tuple[list[list[int]], Tensor | None]:
        n, bs = len(self.items), self.batch_size
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else list(range(n))
        flips = torch.rand(n, generator=self.generator) < 0.5 if self.augment == "flip" else None
        return [order[i: i + bs] for i in range(0, n, bs)], flips

    def _batches(self) -> tuple[list[list[int]], Tensor | None]:
        if self._plan is None:
            self._plan = self._draw()
        return self._plan

    def __len__(self) -> int:
        return len(self._batches()[0])

    def load(self, i: int, flip: bool = False) -> np.ndarray:
        """uint8 (S, S, 3) of item i, PIL bilinear resize (+ horizontal flip)."""
        from PIL import Image

        item = self.items[i]
        try:
            with Image.open(item.path) as im:
                im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        except (OSError, Image.DecompressionBombError) as e:  # also a decompression bomb
            raise DataError(f"PASCAL VOC {item.path}: not a readable image ({e}). {self.hint}".replace("\n", " ")) from e
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(im, dtype=np.uint8)

    def targets(self, i: int, flip: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``(boxes (G, 4) in S x S pixels, labels (G,), difficult (G,))`` of item i."""
        item = self.items[i]
        s = self.size
        boxes = torch.from_numpy(item.boxes.astype(np.float32)).reshape(-1, 4).clone()
        boxes[:, 0::2] *= s / item.width
        boxes[:, 1::2] *= s / item.height
        if flip:
            boxes = torch.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], dim=1)
        return boxes, torch.from_numpy(item.labels.astype(np.int64)), torch.from_numpy(item.difficult.astype(bool))

    def collate(self, rows: list[int], flips: list[bool], images: list[np.ndarray]) -> Batch:
        b = len(rows)
        tg = [self.targets(i, f) for i, f in zip(rows, flips)]
        g = max([len(t[1]) for t in tg] + [1])
        boxes = torch.zeros(b, g, 4)
        labels = torch.zeros(b, g, dtype=torch.int64)
        difficult = torch.zeros(b, g, dtype=torch.bool)
        matched = []
        for k, (bx, lb, df) in enumerate(tg):
            boxes[k, : len(lb)], labels[k, : len(lb)], difficult[k, : len(lb)] = bx, lb, df
            keep = torch.ones_like(df) if self.train_difficult and self.split == "train" else ~df
            matched.append(match_anchors(self.anchors, bx, keep))
        matched_t = torch.stack(matched)
        counts = (matched_t >= 0).sum(dim=1)
        kmax = max(int(counts.max()), 1)
        pos = torch.full((b, kmax), -1, dtype=torch.int64)
        y = torch.full((b, kmax), IGNORE, dtype=torch.int64)
        for k in range(b):
            p = (matched_t[k] >= 0).nonzero().flatten()
            pos[k, : len(p)] = p
            y[k, : len(p)] = labels[k, matched_t[k, p]]
        x = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))).float().div_(255.0)
        orig = torch.tensor([[self.items[i].height, self.items[i].width] for i in rows], dtype=torch.int64)
        extra = {"boxes": boxes, "labels": labels, "difficult": difficult, "num_objects": torch.tensor([len(t[1]) for t in tg]),
                 "orig_size": orig, "matched": matched_t, "pos_anchor": pos, "split": self.split}
        return Batch(x, y, torch.tensor(rows, dtype=torch.int64), extra)

    def __iter__(self) -> Iterator[Batch]:
        (plan, flips), self._plan = self._batches(), None
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="natbench-voc") if self.num_workers > 0 else None
        try:
            for rows in plan:
                fl = [bool(flips[i]) if flips is not None else False for i in rows]
                args = list(zip(rows, fl))
                images = list(pool.map(lambda a: self.load(*a), args)) if pool else [self.load(*a) for a in args]
                yield self.collate(rows, fl, images)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def carve_validation(items: Sequence[VOCItem], fraction: float, seed: int) -> tuple[list[VOCItem], list[VOCItem]]:
    """``(train, val)``: ``round(fraction * n)`` images (at least 1 when fraction > 0) drawn with ``seed``."""
    n = len(items)
    k = min(max(1, int(round(fraction * n))), n - 1) if fraction > 0 else 0
    held = set(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist()) if k else set()
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


# ------------------------------------------------------------------------------------------ task
class DetectionTask:
    """Object detection on PASCAL VOC (see the module docstring)."""

    capabilities = frozenset({"logits", "detections"})
    headline_metric = "mAP"
    METRICS = ("mAP", "mAP_area")
    LEADERBOARD_METRICS = ("mAP",)  # the NAT paper's Table 13 reports VOC07 mAP per attack
    OBJECTIVES = EVAL_OBJECTIVES  # what a suite's attacks may ask for
    TRAIN_OBJECTIVES = TRAIN_OBJECTIVES  # what training-time attacks (defenses) may ask for

    @dataclass(frozen=True)
    class Params:
        correct_score: float = 0.5  # per-image flags: an object counts as found by a detection with at least this score
        ap_mode: Literal["11point", "area"] = "11point"  # the headline mAP: VOC2007 11-point (SSD, MTD, NAT) or all-point
        train_difficult: bool = False  # train on difficult objects too (ssd.pytorch/mmdet: no)
        score_thresh: float | None = None  # detector post-processing; None = the architecture's (torchvision: 0.01, SSDlite 0.001)
        nms_thresh: float | None = None  # None = the architecture's (0.45, SSDlite 0.55)
        detections_per_img: int | None = None  # None = the architecture's (200, SSDlite 300)

        def validate(self, where: str) -> None:
            if not 0 <= self.correct_score <= 1:
                raise ConfigError(f"{where}.correct_score: must be in [0, 1], got {self.correct_score}")
            if self.ap_mode not in MODES[:2]:
                raise ConfigError(f"{where}.ap_mode: one of 11point, area")
            for name in ("score_thresh", "nms_thresh"):
                v = getattr(self, name)
                if v is not None and not 0 <= v <= 1:
                    raise ConfigError(f"{where}.{name}: must be in [0, 1] or null, got {v}")
            if self.detections_per_img is not None and self.detections_per_img < 1:
                raise ConfigError(f"{where}.detections_per_img: must be >= 1 or null")

    def __init__(self, spec: TaskSpec, data_root: Path | None = None):
        self.spec = spec
        self.name = spec.task
        self.threat = spec.threat_model
        self.data_root = data_root
        self.params = from_dict(self.Params, dict(spec.params), "task.params")
        self._check_spec()
        self._splits: dict[str, list[VOCItem]] | None = None
        self._anchor_spec: AnchorSpec | None = None

    # ------------------------------------------------------------------ spec and data
    def _check_spec(self) -> None:
        d, m = self.spec.data, self.spec.model
        if d.augment not in AUGMENTS:
            raise ConfigError(f"data.augment: '{d.augment}' is not offered by the detection task.{suggest(d.augment, AUGMENTS)} "
                              f"Available: {', '.join(AUGMENTS)}")
        for name, default in (("resize", None), ("class_list", "cmc")):
            if getattr(d, name) != default:
                raise ConfigError(f"data.{name}: not used by the detection task; the input size is data.image_size")
        if m.arch not in ARCHS:
            raise ConfigError(f"model.arch: unknown detector '{m.arch}'.{suggest(m.arch, ARCHS)} Available: {', '.join(ARCHS)}")
        fixed = ARCHS[m.arch]
        if fixed is not None and d.image_size != fixed:
            raise ConfigError(f"data.image_size: {m.arch} takes {fixed}x{fixed} inputs, got {d.image_size}; "
                              f"set data.image_size={fixed}")
        if fixed is None and d.image_size < 64:
            raise ConfigError(f"data.image_size: ssd_tiny needs >= 64, got {d.image_size}")
        if m.num_classes != NUM_CLASSES:
            raise ConfigError(f"model.num_classes: VOC detection has {NUM_CLASSES} classes (background + 20), got {m.num_classes}")
        if m.in_channels != 3 or len(m.mean) != 3 or len(m.std) != 3:
            raise ConfigError("model: the detection task takes RGB images: in_channels 3 and three mean/std values")

    def _data(self) -> dict[str, list[VOCItem]]:
        if self._splits is None:
            d = self.spec.data
            if d.dataset not in READERS:
                raise ConfigError(f"data.dataset: unknown dataset '{d.dataset}'.{suggest(d.dataset, READERS)} Available: {', '.join(READERS)}")
            splits = load_target(READERS[d.dataset])(self.data_root, test_fraction=d.test_fraction, split_seed=d.split_seed)
            if not isinstance(splits, VOCSplits):
                raise ConfigError(f"data.dataset: {d.dataset} is not a detection dataset (the detection task reads voc)")
            train, val = carve_validation(splits.train, d.val_fraction, d.split_seed)
            self._splits = {"train": train, "val": val, "test": splits.test}
            log.info("detection %s: %d train, %d val, %d test images", self.name, len(train), len(val), len(splits.test))
        return self._splits

    def check_data(self) -> None:
        """Read the annotations and decode one image of each split, so missing data fails before training."""
        data = self._data()
        for split in ("train", "test"):
            VOCLoader(data[split][:1], 1, self.spec.data.image_size, self.anchor_spec(), split).load(0)

    def anchor_spec(self) -> AnchorSpec:
        """The default boxes of ``model.arch`` at ``data.image_size`` (from a model built once, the global
        RNG untouched) and its matcher."""
        if self._anchor_spec is None:
            with torch.random.fork_rng(devices=[]):
                model = self.build_model().eval()
            s = self.spec.data.image_size
            with torch.no_grad():
                _, _, anchors = model.head(torch.zeros(1, 3, s, s))
            self._anchor_spec = AnchorSpec(anchors.detach().cpu().clone(), model.ssd.proposal_matcher)
        return self._anchor_spec

    def loaders(self, batch_size: int, generator: torch.Generator, eval_batch_size: int = 64):
        """(train, val, test) :class:`VOCLoader`; train shuffled and augmented from ``generator``."""
        data = self._data()
        d, p = self.spec.data, self.params
        spec = self.anchor_spec()
        workers = getattr(d, "num_workers", 0)
        train = VOCLoader(data["train"], batch_size, d.image_size, spec, "train", augment=d.augment, shuffle=True,
                          generator=generator, train_difficult=p.train_difficult, num_workers=workers)
        val = VOCLoader(data["val"], eval_batch_size, d.image_size, spec, "val", num_workers=workers)
        test = VOCLoader(data["test"], eval_batch_size, d.image_size, spec, "test", num_workers=workers)
        return train, val, test

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        m, p = self.spec.model, self.params
        return DetectionNet(build_ssd(m.arch, self.spec.data.image_size, m.width, m.mean, m.std,
                                      score_thresh=p.score_thresh, nms_thresh=p.nms_thresh,
                                      detections_per_img=p.detections_per_img))

    # ------------------------------------------------------------------ losses and objectives
    @staticmethod
    def _net(model: nn.Module) -> DetectionNet:
        if not isinstance(model, DetectionNet):
            raise TypeError(f"{type(model).__name__} is not a detection model; build it with DetectionTask.build_model")
        return model

    def _check_anchors(self, anchors: Tensor, batch: Batch) -> None:
        a = batch.extra["matched"].shape[1]
        if anchors.shape[0] != a:
            raise ConfigError(f"the model has {anchors.shape[0]} default boxes, the batch was matched to {a} "
                              f"({self.spec.model.arch} at {self.spec.data.image_size}); detection models of one run "
                              f"(NAT's adversary included) must share the architecture and input size")

    def _gt(self, batch: Batch, x: Tensor, net: DetectionNet) -> tuple[Tensor, Tensor, Tensor]:
        """``(boxes in the model's input pixels, labels, matched)`` of ``batch`` for inputs ``x``."""
        boxes = batch.extra["boxes"]
        h, w = x.shape[-2:]
        mh, mw = net.size
        if (h, w) != (mh, mw):
            boxes = boxes * boxes.new_tensor([mw / w, mh / h, mw / w, mh / h])
        return boxes, batch.extra["labels"], batch.extra["matched"]

    def losses(self, model: nn.Module, batch: Batch, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(cls_i, loc_i, n_i, cls_logits)``: per-image SSD loss sums (see the module docstring)."""
        net = self._net(model)
        cls_logits, bbox, anchors = net.head(x)
        self._check_anchors(anchors, batch)
        boxes, labels, matched = self._gt(batch, x, net)
        cls, loc, n = multibox_sums(cls_logits, bbox, anchors, boxes, labels, matched, net.ssd.box_coder,
                                    net.ssd.neg_to_pos_ratio)
        return cls, loc, n, cls_logits

    @staticmethod
    def matched_logits(cls_logits: Tensor, pos_anchor: Tensor) -> Tensor:
        """``(B, C, K)``: the logits of each image's matched anchors, zeros in the padding (module docstring)."""
        b, k = pos_anchor.shape
        c = cls_logits.shape[-1]
        reps = cls_logits.shape[0] // b
        pos = pos_anchor.repeat(reps, 1) if reps > 1 else pos_anchor
        z = cls_logits.gather(1, pos.clamp(min=0).unsqueeze(-1).expand(-1, -1, c))
        z = torch.where((pos >= 0).unsqueeze(-1), z, torch.zeros((), dtype=z.dtype, device=z.device))
        return z.permute(0, 2, 1)

    def logits(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        """Class logits of the matched anchors, ``(rows of x, 21, K)``; see the module docstring."""
        b = len(batch)
        if x.shape[0] % b:
            raise ValueError(f"detection logits: {x.shape[0]} inputs for a batch of {b} images")
        net = self._net(model)
        cls_logits, _, anchors = net.head(x)
        self._check_anchors(anchors, batch)
        return self.matched_logits(cls_logits, batch.extra["pos_anchor"])

    def training_loss(self, model: nn.Module, batch: Batch, x: Tensor, cache: dict | None = None,
                      which: str | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(per-image loss (B,), {"cls": ..., "loc": ...})``: the per-image values whose mean is
        torchvision's SSD loss, and its two parts; with ``cache``/``which`` the matched-anchor logits of
        the same forward are stored as ``cache["logits_<which>"]`` for composed terms (NAT)."""
        cls, loc, n, cls_logits = self.losses(model, batch, x)
        if cache is not None and which:
            cache[f"logits_{which}"] = self.matched_logits(cls_logits, batch.extra["pos_anchor"])
        norm = n.sum().clamp(min=1).to(cls.dtype)
        per = (cls + loc) * (len(cls) / norm)
        return per, {"cls": cls.sum().detach() / norm, "loc": loc.sum().detach() / norm}

    def task_loss(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        return self.training_loss(model, batch, x)[0]

    def objective(self, model: nn.Module, batch: Batch, kind: str) -> Objective | AnchorObjective:
        if kind == "ce":
            kind = SELECTION_OBJECTIVE
        if kind in ("det_cls", "det_loc", "det_total"):
            def objective(z: Tensor, kind=kind) -> Tensor:
                cls, loc, n, _ = self.losses(model, batch, z)
                total = {"det_cls": cls, "det_loc": loc, "det_total": cls + loc}[kind]
                return total / n.clamp(min=1).to(total.dtype)

            return objective
        if kind == "anchors":
            net = self._net(model)
            matched = batch.extra["matched"]
            fg = matched >= 0
            labels = torch.where(fg, batch.extra["labels"].gather(1, matched.clamp(min=0)), torch.zeros_like(matched))

            def heads(z: Tensor) -> tuple[Tensor, Tensor]:
                cls_logits, bbox, anchors = net.head(z)
                self._check_anchors(anchors, batch)
                return cls_logits, bbox

            return AnchorObjective(heads, labels, fg, NUM_CLASSES)
        raise ConfigError(f"objective '{kind}' is not offered by task kind detection.{suggest(kind, TRAIN_OBJECTIVES)} "
                          f"Available: {', '.join(TRAIN_OBJECTIVES)}")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, loader: Any, attack: Any | None = None, *,
                 objective: str | Callable[[nn.Module, Batch], Any] | None = None, eps: float | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 on_batch: Callable[[], None] | None = None, with_sparsity: bool = False) -> EvalOut:
        """VOC mAP of ``loader`` (a :class:`VOCLoader`) under ``attack`` (module docstring);
        ``with_sparsity`` is accepted and ignored (output sparsity is a classification analysis)."""
        if not isinstance(loader, VOCLoader):
            raise TypeError(f"detection evaluation needs a VOCLoader (DetectionTask.loaders), got {type(loader).__name__}")
        net = self._net(model)
        eps = self.threat.eps if eps is None else float(eps)
        build = None
        if attack is not None:
            kind = objective if objective is not None else getattr(attack, "objective_kind", SELECTION_OBJECTIVE)
            if kind == "ce":
                kind = SELECTION_OBJECTIVE  # a classification attack (PGD, the runner's validation attack)
            if callable(kind):
                build = kind
            elif kind in EVAL_OBJECTIVES:
                build = lambda m, b, k=kind: self.objective(m, b, k)  # noqa: E731
            else:
                raise ConfigError(f"objective '{kind}' cannot be used in detection evaluation.{suggest(str(kind), EVAL_OBJECTIVES)} "
                                  f"Available: {', '.join(EVAL_OBJECTIVES)}")
        was_training = model.training
        model.eval()
        dets, raw_dets, gts, raw_linf = [], [], [], []
        try:
            for batch in loader:
                batch = batch.to(device)
                x = batch.x
                raw = None
                if attack is not None:
                    x = attack(build(model, batch), batch.x, eps=eps, generator=generator)
                    assert_in_ball(batch.x, x, eps, f"attack {getattr(attack, 'name', attack)}")
                    raw = getattr(attack, "last_raw", None)
                sizes = [tuple(s) for s in batch.extra["orig_size"].tolist()]
                with torch.no_grad():
                    dets += [{k: v.detach().cpu() for k, v in d.items()} for d in net.detect(x.float(), sizes)]
                    if raw is not None:
                        raw_dets += [{k: v.detach().cpu() for k, v in d.items()} for d in net.detect(raw.float(), sizes)]
                        raw_linf.append((raw - batch.x).abs().flatten(1).amax(dim=1).cpu())
                gts += [{"boxes": loader.items[i].boxes, "labels": loader.items[i].labels,
                         "difficult": loader.items[i].difficult} for i in batch.index.tolist()]
                if on_batch is not None:
                    on_batch()
        finally:
            model.train(was_training)
        return self.score(dets, gts, raw_dets if raw_linf else None, torch.cat(raw_linf) if raw_linf else None)

    def score(self, dets: list[dict], gts: list[dict], raw_dets: list[dict] | None = None,
              raw_linf: Tensor | None = None) -> EvalOut:
        """Metrics and per-image flags from detections and ground truth in original image pixels."""
        labels = list(range(1, NUM_CLASSES))
        main = voc_map(dets, gts, mode=self.params.ap_mode, labels=labels).map
        other = voc_map(dets, gts, mode="area" if self.params.ap_mode == "11point" else "11point", labels=labels).map
        metrics = {"mAP": main, ("mAP_area" if self.params.ap_mode == "11point" else "mAP_11point"): other}
        if raw_dets is not None:
            metrics["mAP_raw"] = voc_map(raw_dets, gts, mode=self.params.ap_mode, labels=labels).map
            metrics["raw_linf_mean"] = float(raw_linf.mean()) if len(raw_linf) else 0.0
            metrics["raw_linf_max"] = float(raw_linf.max()) if len(raw_linf) else 0.0
        correct = torch.tensor([image_detected(d, g, score_thresh=self.params.correct_score) for d, g in zip(dets, gts)],
                               dtype=torch.bool)
        return EvalOut(metrics, correct)


__all__ = ["DetectionTask", "DetectionNet", "AnchorObjective", "VOCLoader", "multibox_sums", "match_anchors",
           "carve_validation"]
