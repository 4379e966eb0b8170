"""``det-cls``: L-inf PGD on the detector's classification loss (``A_cls`` of Zhang & Wang, "Towards
Adversarially Robust Object Detection", ICCV 2019, Sec. 4; notes/algorithms.md Sec. 11.1).

Maximises, per image, SSD's classification loss: CE of the matched anchors plus the CE of the 3x as
many hardest background anchors (hard-negative mining), divided by the number of matched anchors
(objective kind ``det_cls`` of the detection task). 10 steps of 2/255 from x by default; the shared
loop, its reference (RobustDet) and the budget choice: :mod:`natbench.attacks._det`.
"""
from __future__ import annotations

from dataclasses import dataclass

from natbench.attacks._det import DetectionPGD


class DetCls(DetectionPGD):
    name = "det-cls"
    objective_kind = "det_cls"

    @dataclass(frozen=True)
    class Params:
        steps: int = 10  # PGD steps (RobustDet's evaluation: 20)
        step_size: float = 2 / 255  # absolute step, eps/4 at 8/255 (RobustDet's evaluation: 8/255)
        random_start: bool = False  # start at x, as RobustDet's attacks
        restarts: int = 1  # with random_start: keep per image the restart with the highest loss
