"""VOC mAP (natbench.analysis.voc_map): a hand-computed VOC07 case with difficult objects, duplicates and
the strict IoU > 0.5 rule, and agreement with torchmetrics' MeanAveragePrecision(iou_thresholds=[0.5])
(pycocotools) on data without difficult boxes: the 101-point interpolation exactly, the all-point AP
within the 1/100 bound of the 101-point sampling; the per-image correctness flags."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from natbench.analysis.voc_map import image_detected, voc_ap, voc_map


def _case():
    """Class 1: image 0 has g1 (normal) and g2 (difficult), image 1 has g3; class 2: one box, no
    detection; class 3: only a difficult box (no AP)."""
    gts = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 60, 60]], "labels": [1, 1, 3], "difficult": [0, 1, 1]},
        {"boxes": [[0, 0, 10, 10], [30, 30, 50, 50]], "labels": [1, 2], "difficult": [0, 0]},
    ]
    dets = [
        {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], "scores": [0.9, 0.8, 0.6], "labels": [1, 1, 1]},
        {"boxes": [[50, 50, 60, 60], [1, 0, 10, 10]], "scores": [0.7, 0.5], "labels": [1, 1]},
    ]
    return dets, gts


def test_hand_computed_voc07_case():
    # class 1 sorted: 0.9 TP (g1), 0.8 on the difficult g2: ignored, 0.7 FP (no overlap), 0.6 FP (g1
    # already claimed: a duplicate), 0.5 TP (g3, IoU 0.9). npos = 2.
    # tp = 1 1 1 1 2, fp = 0 0 1 2 2 -> rec = .5 .5 .5 .5 1, prec = 1 1 .5 1/3 .5
    # 11-point: t = 0 .. 0.5 -> 1 (6 points), t = 0.6 .. 1 -> .5 (5 points): 8.5 / 11
    # area: envelope 1 up to recall .5, then .5: .5 * 1 + .5 * .5 = .75
    dets, gts = _case()
    r11 = voc_map(dets, gts, mode="11point")
    ra = voc_map(dets, gts, mode="area")
    assert set(r11.ap) == {1, 2} and r11.npos == {1: 2, 2: 1}  # class 3: only a difficult box
    np.testing.assert_allclose(r11.rec[1], [0.5, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(r11.prec[1], [1, 1, 0.5, 1 / 3, 0.5])
    assert r11.ap[1] == pytest.approx(8.5 / 11) and ra.ap[1] == pytest.approx(0.75)
    assert r11.ap[2] == 0.0 and ra.ap[2] == 0.0
    assert r11.map == pytest.approx((8.5 / 11) / 2) and ra.map == pytest.approx(0.375)
    # the same detections without the difficult flag: 0.8 becomes a TP and g2 counts: npos 3
    plain = [{**g, "difficult": [0] * len(g["labels"])} for g in gts]
    r = voc_map(dets, plain, mode="11point")
    np.testing.assert_allclose(r.rec[1], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0])


def test_iou_must_exceed_half_strictly():
    gts = [{"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    exactly_half = [{"boxes": [[0, 0, 10, 20]], "scores": [0.9], "labels": [1]}]  # IoU 100 / 200
    just_above = [{"boxes": [[0, 0, 10, 19.9]], "scores": [0.9], "labels": [1]}]
    assert voc_map(exactly_half, gts).map == 0.0
    assert voc_map(just_above, gts).map == pytest.approx(1.0)


def test_voc_ap_modes_on_known_curves():
    rec, prec = np.array([0.2, 0.4, 0.4, 0.8]), np.array([1.0, 1.0, 0.6667, 0.5])
    # 11-point: t 0..0.4 -> 1 (5), 0.5..0.8 -> 0.5 (4), 0.9, 1.0 -> 0: 7 / 11
    assert voc_ap(rec, prec, "11point") == pytest.approx(7 / 11)
    assert voc_ap(rec, prec, "area") == pytest.approx(0.4 * 1 + 0.4 * 0.5)
    # 101-point: recall thresholds 0..0.40 -> 1 (41 points), 0.41..0.80 -> 0.5 (40), above: 0
    assert voc_ap(rec, prec, "coco101") == pytest.approx((41 + 40 * 0.5) / 101)
    with pytest.raises(ValueError):
        voc_ap(rec, prec, "interp")


def _random_case(seed: int, n_images: int = 40, n_classes: int = 5):
    """Ground truth on a 4x4 grid of cells (boxes of one image never overlap), detections = jittered
    boxes (sometimes of the wrong class), duplicates and random false positives; distinct scores."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(n_images):
        cells = rng.choice(16, size=int(rng.integers(1, 6)), replace=False)
        boxes, labels = [], []
        for c in cells:
            w, h = rng.uniform(15, 40, size=2)
            x0, y0 = (c % 4) * 50 + rng.uniform(0, 50 - w), (c // 4) * 50 + rng.uniform(0, 50 - h)
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(int(rng.integers(1, n_classes + 1)))
        db, dl = [], []
        for b, lab in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):
                j = np.asarray(b) + rng.normal(0, 3, size=4)
                j[2:] = np.maximum(j[2:], j[:2] + 1)
                db.append(j)
                dl.append(lab if rng.uniform() < 0.8 else int(rng.integers(1, n_classes + 1)))
        for _ in range(int(rng.integers(0, 4))):
            x0, y0 = rng.uniform(0, 180, size=2)
            db.append([x0, y0, x0 + rng.uniform(5, 30), y0 + rng.uniform(5, 30)])
            dl.append(int(rng.integers(1, n_classes + 1)))
        dets.append({"boxes": np.asarray(db, dtype=np.float64).reshape(-1, 4), "scores": rng.uniform(size=len(db)),
                     "labels": np.asarray(dl, dtype=np.int64)})
        gts.append({"boxes": np.asarray(boxes), "labels": np.asarray(labels, dtype=np.int64)})
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics_map50(seed):
    tm = pytest.importorskip("torchmetrics.detection")
    pytest.importorskip("pycocotools")
    dets, gts = _random_case(seed)

    def torchmetrics_map(**kw) -> float:
        m = tm.MeanAveragePrecision(iou_thresholds=[0.5], **kw)
        m.update([{"boxes": torch.tensor(d["boxes"]), "scores": torch.tensor(d["scores"]), "labels": torch.tensor(d["labels"])}
                  for d in dets], [{"boxes": torch.tensor(g["boxes"]), "labels": torch.tensor(g["labels"])} for g in gts])
        return float(m.compute()["map"])

    # pycocotools' own recall thresholds (torchmetrics' default is torch.linspace in float32, whose
    # values sit a hair above k/100, so a recall of exactly 0.6 = 3/5 misses its point): exact agreement
    exact = torchmetrics_map(rec_thresholds=np.linspace(0.0, 1.0, 101).tolist())
    assert voc_map(dets, gts, mode="coco101").map == pytest.approx(exact, abs=1e-6)
    # all-point AP vs the 101-point sampling of the same precision envelope: |difference| <= 1/100
    area = voc_map(dets, gts, mode="area").map
    assert abs(area - exact) <= 0.01 and area != exact
    assert abs(torchmetrics_map() - exact) < 0.05  # the float32 thresholds move a few points only
    assert voc_map(dets, gts, mode="11point").map != area


def test_image_detected_flags():
    gt = {"boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "labels": [1, 2], "difficult": [0, 1]}
    hit = {"boxes": [[0, 0, 10, 9]], "scores": [0.8], "labels": [1]}
    assert image_detected(hit, gt)  # the difficult box need not be found
    assert not image_detected({**hit, "scores": [0.3]}, gt)  # below correct_score
    assert image_detected({**hit, "scores": [0.3]}, gt, score_thresh=0.2)
    assert not image_detected({**hit, "labels": [2]}, gt)  # wrong class
    assert not image_detected({"boxes": [[0, 0, 10, 20]], "scores": [0.9], "labels": [1]}, gt)  # IoU 0.5, not > 0.5
    only_difficult = {"boxes": [[0, 0, 10, 10]], "labels": [1], "difficult": [1]}
    assert image_detected({"boxes": np.zeros((0, 4)), "scores": [], "labels": []}, only_difficult)
    assert not image_detected(hit, only_difficult)
