"""PASCAL VOC mean average precision at IoU 0.5: the VOC2007 11-point metric (the paper metric of SSD,
MTD and the NAT paper's Table 13), the VOC2010+ all-point ("area") metric, and COCO's 101-point
interpolation of the same matches (for cross-checks).

Matching is the VOC devkit's, as ``rbgirshick/py-faster-rcnn: lib/datasets/voc_eval.py`` (=
``detectron2/evaluation/pascal_voc_evaluation.py``) implements it, per class over the whole test set:

1. the class's detections of all images, sorted by decreasing score (ties: input order, a stable
   sort; the reference's ``np.argsort`` is not stable, so tied scores may be ordered differently);
2. each detection takes the ground-truth box of its image and class with the highest IoU
   (``jmax``). If that IoU is **> 0.5** (strict): a *difficult* box makes the detection neither a
   true nor a false positive (ignored); an unclaimed box makes it a true positive and claims the
   box; a box claimed by an earlier (higher-scoring) detection makes it a false positive. Otherwise
   (IoU <= 0.5 or no box) a false positive;
3. ``npos`` = the class's non-difficult boxes; recall ``tp / npos``, precision
   ``tp / max(tp + fp, eps)`` along the sorted detections;
4. AP: ``11point`` = mean over t in {0, 0.1, ..., 1} of the highest precision at recall >= t (0 when
   none; VOC2007); ``area`` = area under the monotone precision envelope (VOC2010+); ``coco101`` = the
   pycocotools interpolation (envelope, then the precision at the first recall >= t for 101 t in
   [0, 1], 0 past the last recall).

mAP is the mean AP over the classes with at least one non-difficult box in the evaluated set (VOC07
test has all 20; the fixture only a few); classes without one have no AP (the reference would divide
by zero).

**Coordinates.** Boxes are continuous ``x1, y1, x2, y2`` pixels (natbench's VOC reader turns VOC's
1-based inclusive ``xmin..xmax`` into ``xmin - 1 .. xmax``). The devkit's IoU on integer boxes adds 1
to every width and height; on natbench's boxes that is plain IoU: ``min(x2) - max(x1)`` here equals
``min(xmax) - max(xmin) + 1`` there (and a detector's 0-based inclusive box, written "+1" as the
reference writes it, is ``x1, y1, x2 - 1, y2 - 1`` in these coordinates), so no "+1" appears below.

**Against torchmetrics / pycocotools** (``MeanAveragePrecision(iou_thresholds=[0.5])``, checked in
``tests/test_det_map.py``): COCO matches a detection to the best *unclaimed* box with IoU >= 0.5
(VOC: the best box, claimed or not, IoU > 0.5), keeps at most 100 detections per image and class,
has no ``difficult`` (its ``iscrowd`` is not the same thing) and interpolates at 101 recall points.
On data without difficult boxes, whose boxes of one class do not overlap (so both rules pick the same
box), at most 100 detections per image and distinct scores, ``coco101`` here equals torchmetrics'
``map`` to floating-point precision when torchmetrics is given pycocotools' recall thresholds
(``rec_thresholds=np.linspace(0, 1, 101)``; its default is ``torch.linspace`` in float32, whose points
lie a hair above k/100, so a recall of exactly k/100 (3/5 = 0.6) misses its point and takes the next
precision). ``area`` differs from ``coco101`` only by the sampling of the same non-increasing
precision envelope p(r): the integral of p lies between the left and right 0.01-step Riemann sums of
the 101 samples, so ``|area - coco101| <= 1/100`` for every class and for the mean. ``11point`` is
an 11-point sampling of the envelope and is usually a little higher.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

Mode = Literal["11point", "area", "coco101"]
MODES = ("11point", "area", "coco101")


def voc_ap(rec: np.ndarray, prec: np.ndarray, mode: Mode = "11point") -> float:
    """AP from the recall/precision arrays along the score-sorted detections (see the module docstring)."""
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    if mode == "11point":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the reference's thresholds, float error included
            p = float(np.max(prec[rec >= t])) if np.any(rec >= t) else 0.0
            ap += p / 11.0
        return ap
    if mode == "area":
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = max(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    if mode == "coco101":
        pr = prec.copy()
        for i in range(len(pr) - 1, 0, -1):
            if pr[i] > pr[i - 1]:
                pr[i - 1] = pr[i]
        thresholds = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs
        inds = np.searchsorted(rec, thresholds, side="left")
        q = np.array([pr[j] if j < len(pr) else 0.0 for j in inds])
        return float(q.mean())
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` box with ``(N, 4)`` boxes, continuous ``x1, y1, x2, y2`` coordinates."""
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0.0)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


@dataclass
class MapResult:
    """``map`` over the classes with non-difficult boxes; ``ap``: class label -> AP; ``npos``: label ->
    number of non-difficult boxes; ``rec``/``prec``: label -> the curves."""

    map: float
    ap: dict[int, float] = field(default_factory=dict)
    npos: dict[int, int] = field(default_factory=dict)
    rec: dict[int, np.ndarray] = field(default_factory=dict)
    prec: dict[int, np.ndarray] = field(default_factory=dict)


def _arr(d: dict, key: str, dtype, n: int = 0) -> np.ndarray:
    """``d[key]`` (tensor, array or list) as a numpy array; ``n`` zeros when absent."""
    v = d.get(key)
    if v is None:
        return np.zeros(n, dtype=dtype)
    v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return v.astype(dtype)


def _boxes(d: dict) -> np.ndarray:
    return _arr(d, "boxes", np.float64).reshape(-1, 4)


def class_tp_fp(label: int, detections: Sequence[dict], ground_truth: Sequence[dict],
                iou_thresh: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(sorted scores, tp, fp, npos)`` of one class (VOC matching, see the module docstring).

    ``detections[i]``: ``{"boxes" (N, 4), "scores" (N,), "labels" (N,)}`` of image i;
    ``ground_truth[i]``: ``{"boxes" (M, 4), "labels" (M,), "difficult" (M,) (optional)}``.
    """
    gts = []
    npos = 0
    for g in ground_truth:
        labels = _arr(g, "labels", np.int64).reshape(-1)
        boxes = _boxes(g)
        diff = _arr(g, "difficult", bool, len(labels)).reshape(-1)
        keep = labels == label
        gts.append({"boxes": boxes[keep], "difficult": diff[keep], "claimed": np.zeros(int(keep.sum()), bool)})
        npos += int((~diff[keep]).sum())
    image_ids, scores, boxes = [], [], []
    for i, d in enumerate(detections):
        labels = _arr(d, "labels", np.int64).reshape(-1)
        keep = labels == label
        if keep.any():
            scores.append(_arr(d, "scores", np.float64).reshape(-1)[keep])
            boxes.append(_boxes(d)[keep])
            image_ids.append(np.full(int(keep.sum()), i))
    if not scores:
        return np.zeros(0), np.zeros(0), np.zeros(0), npos
    scores, boxes, image_ids = np.concatenate(scores), np.concatenate(boxes), np.concatenate(image_ids)
    order = np.argsort(-scores, kind="stable")
    scores, boxes, image_ids = scores[order], boxes[order], image_ids[order]
    tp, fp = np.zeros(len(scores)), np.zeros(len(scores))
    for k in range(len(scores)):
        g = gts[image_ids[k]]
        ovmax, jmax = -np.inf, -1
        if len(g["boxes"]):
            overlaps = box_iou(boxes[k], g["boxes"])
            jmax = int(np.argmax(overlaps))
            ovmax = float(overlaps[jmax])
        if ovmax > iou_thresh:
            if not g["difficult"][jmax]:
                if not g["claimed"][jmax]:
                    tp[k] = 1.0
                    g["claimed"][jmax] = True
                else:
                    fp[k] = 1.0
        else:
            fp[k] = 1.0
    return scores, tp, fp, npos


def voc_map(detections: Sequence[dict], ground_truth: Sequence[dict], *, iou_thresh: float = 0.5,
            mode: Mode = "11point", labels: Sequence[int] | None = None) -> MapResult:
    """VOC mAP of ``detections`` against ``ground_truth`` (lists over the same images, see
    :func:`class_tp_fp`); ``labels``: the classes to evaluate (default: every label of the ground truth)."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if labels is None:
        labels = sorted({int(v) for g in ground_truth for v in _arr(g, "labels", np.int64).reshape(-1)})
    out = MapResult(float("nan"))
    for label in labels:
        _, tp, fp, npos = class_tp_fp(int(label), detections, ground_truth, iou_thresh)
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        out.ap[int(label)] = voc_ap(rec, prec, mode)
        out.npos[int(label)], out.rec[int(label)], out.prec[int(label)] = npos, rec, prec
    if out.ap:
        out.map = float(np.mean(list(out.ap.values())))
    return out


def image_detected(detection: dict, ground_truth: dict, *, score_thresh: float = 0.5,
                   iou_thresh: float = 0.5) -> bool:
    """Per-image correctness flag: every non-difficult box of the image is found by a detection of its
    class with score >= ``score_thresh`` and IoU > ``iou_thresh`` (one detection may cover several
    boxes; nothing else is required). An image without non-difficult boxes is correct when it has no
    detection with score >= ``score_thresh``."""
    labels = _arr(ground_truth, "labels", np.int64).reshape(-1)
    boxes = _boxes(ground_truth)
    diff = _arr(ground_truth, "difficult", bool, len(labels)).reshape(-1)
    d_labels = _arr(detection, "labels", np.int64).reshape(-1)
    d_scores = _arr(detection, "scores", np.float64).reshape(-1)
    d_boxes = _boxes(detection)
    confident = d_scores >= score_thresh
    if not (~diff).any():
        return not confident.any()
    for box, label in zip(boxes[~diff], labels[~diff]):
        cand = confident & (d_labels == label)
        if not cand.any() or not (box_iou(box, d_boxes[cand]) > iou_thresh).any():
            return False
    return True
