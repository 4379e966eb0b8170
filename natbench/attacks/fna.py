"""FNA, the furthest-negative attack: push from the same identity, pull towards the furthest other one.

Bouniot, Audigier, Loesch, "Vulnerability of Person Re-Identification Models to Metric Adversarial
Attacks", CVPR Workshops 2020 (code: CEA-LIST/adv-reid ``gen_adv.py`` ``--attack FNA``,
``perturb_queries_hardest_multi`` with loss ``max_min_mse``); notes/algorithms.md Sec. 10.2. Maximises
``sum_{g in push} ||phi(x') - g||^2 - ||phi(x') - g_pull||^2`` where the push guides are the clean
embeddings of the same identity on the attacked side (itself included, padded with its own clean
embedding to the largest identity group, as the reference) and ``g_pull`` is the prototype (mean clean
embedding) of the other identity of that side whose prototype is furthest from the image. The guides
are built by the re-id task (objective kind ``"fna"``). No random start (``rand_init=False``).

Defaults: 16 steps of 1/255 (NAT paper Table 12; the reference: 15 steps at eps 5/255), queries
attacked. Shared loop and parameter choices: ``natbench.attacks._metric``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from natbench.attacks._metric import MetricAttack


class FNA(MetricAttack):
    name = "fna"
    objective_kind = "fna"

    @dataclass(frozen=True)
    class Params:
        steps: int = 16  # iterations (NAT paper Table 12: 16)
        step_size: float = 1 / 255  # absolute step (advertorch eps_iter of the reference)
        random_start: bool = False  # the reference starts at x (rand_init=False)
        eps: float | None = None  # overrides the evaluation eps when set (e.g. 8/255, 10/255 in a suite)
        side: Literal["query", "gallery", "both"] = "query"  # the side the task perturbs
