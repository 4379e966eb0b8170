"""``det-loc``: L-inf PGD on the detector's localisation loss (``A_loc`` of Zhang & Wang, "Towards
Adversarially Robust Object Detection", ICCV 2019, Sec. 4; notes/algorithms.md Sec. 11.1).

Maximises, per image, SSD's localisation loss: smooth L1 between the predicted box offsets of the
matched anchors and the encoded ground-truth boxes, divided by the number of matched anchors
(objective kind ``det_loc`` of the detection task). 10 steps of 2/255 from x by default; the shared
loop, its reference (RobustDet) and the budget choice: :mod:`natbench.attacks._det`.
"""
from __future__ import annotations

from dataclasses import dataclass

from natbench.attacks._det import DetectionPGD


class DetLoc(DetectionPGD):
    name = "det-loc"
    objective_kind = "det_loc"

    @dataclass(frozen=True)
    class Params:
        steps: int = 10  # PGD steps (RobustDet's evaluation: 20)
        step_size: float = 2 / 255  # absolute step, eps/4 at 8/255 (RobustDet's evaluation: 8/255)
        random_start: bool = False  # start at x, as RobustDet's attacks
        restarts: int = 1  # with random_start: keep per image the restart with the highest loss
