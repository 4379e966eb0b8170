"""SMA, the self metric attack: push an image's embedding away from its own clean embedding.

Bouniot, Audigier, Loesch, "Vulnerability of Person Re-Identification Models to Metric Adversarial
Attacks", CVPR Workshops 2020 (code: CEA-LIST/adv-reid ``gen_adv.py`` ``--attack SMA``,
``perturb_queries_self``); notes/algorithms.md Sec. 10.2. Maximises ``||phi(x') - phi(x)||^2``
(raw embedding, ``MSELoss(reduction="sum")``) with L-inf PGD from a uniform random start
(advertorch ``rand_init=True``). Needs no label and no other image, so it also attacks distractors.

Defaults: 16 steps of 1/255 (NAT paper Table 12; the reference: 15 steps of 1/255 at eps 5/255),
queries attacked, the gallery clean. The shared loop and parameter choices: ``natbench.attacks._metric``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from natbench.attacks._metric import MetricAttack


class SMA(MetricAttack):
    name = "sma"
    objective_kind = "sma"

    @dataclass(frozen=True)
    class Params:
        steps: int = 16  # iterations (NAT paper Table 12: 16)
        step_size: float = 1 / 255  # absolute step (advertorch eps_iter of the reference)
        random_start: bool = True  # U(-eps, eps) start (advertorch rand_init=True for SMA)
        eps: float | None = None  # overrides the evaluation eps when set (e.g. 8/255, 10/255 in a suite)
        side: Literal["query", "gallery", "both"] = "query"  # the side the task perturbs
