"""``det-cls``: L-inf PGD on the detector's classification loss (``A_cls`` of Zhang & Wang, "Towards
Adversarially Robust Object Detection", ICCV 2019, Sec. 4; notes/algorithms.md Sec. 11.1).

Maximises, per image, SSD's classification loss: CE of the matched anchors plus the CE of the 3x as
many hardest background anchors (hard-negative mining), divided by the number of matched anchors
(objective kind ``det_cls`` of the detection task). 10 steps of 2/255 from x by default; the shared
loop, its reference (RobustDet) and the budget choice: :mod:`natbench.attacks._det`.
"""
from __future__ import annotations

from natbench.attacks._det import DetectionPGD


class DetCls(DetectionPGD):
    name = "det-cls"
    objective_kind = "det_cls"
