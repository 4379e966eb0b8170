"""Object detection on PASCAL VOC with torchvision's SSD: per-image SSD losses, matched-anchor logits,
VOC07 mAP, and the objectives of the detection attacks (notes/algorithms.md Sec. 11, formats.md Sec. 4-5).

Modules: :mod:`.model` (DetectionNet, build_ssd), :mod:`.losses` (per-image multibox sums, matched-anchor logits,
the ``anchors`` objective), :mod:`.data` (anchor matching, VOCLoader, validation carve-out), :mod:`.task`
(:class:`DetectionTask`).

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

from .data import IGNORE, AnchorSpec, VOCLoader, carve_validation, match_anchors
from .losses import AnchorObjective, ground_truth, matched_logits, multibox_sums
from .model import ARCHS, NUM_CLASSES, DetectionNet, build_ssd, detection_net
from .task import AUGMENTS, EVAL_OBJECTIVES, SELECTION_OBJECTIVE, TRAIN_OBJECTIVES, DetectionTask, score

__all__ = ["DetectionTask", "DetectionNet", "AnchorObjective", "VOCLoader", "multibox_sums", "match_anchors",
           "carve_validation", "AnchorSpec", "build_ssd", "ground_truth", "matched_logits", "score", "ARCHS",
           "NUM_CLASSES", "IGNORE", "AUGMENTS", "EVAL_OBJECTIVES", "SELECTION_OBJECTIVE", "TRAIN_OBJECTIVES"]
