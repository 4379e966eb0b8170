"""``det-loc``: L-inf PGD on the detector's localisation loss (``A_loc`` of Zhang & Wang, "Towards
Adversarially Robust Object Detection", ICCV 2019, Sec. 4; notes/algorithms.md Sec. 11.1).

Maximises, per image, SSD's localisation loss: smooth L1 between the predicted box offsets of the
matched anchors and the encoded ground-truth boxes, divided by the number of matched anchors
(objective kind ``det_loc`` of the detection task). 10 steps of 2/255 from x by default; the shared
loop, its reference (RobustDet) and the budget choice: :mod:`natbench.attacks._det`.
"""
from __future__ import annotations

from natbench.attacks._det import DetectionPGD


class DetLoc(DetectionPGD):
    name = "det-loc"
    objective_kind = "det_loc"
