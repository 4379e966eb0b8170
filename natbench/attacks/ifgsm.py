"""I-FGSM metric attack (AMA) of Bai et al.: push an image away from the same identity's other-side images.

Bai, Li, Zhou, Li, Torr, "Adversarial Metric Attack and Defense for Person Re-identification",
IEEE TPAMI 2020, arXiv 1901.10650 (code: SongBaiHust/Adversarial_Metric_Attack ``Gen_Adv.py``,
non-targeted I-FGSM); notes/algorithms.md Sec. 10.1. Maximises
``sum_{g in G} MSE(n(phi(x')), n(g))`` with MSE the mean over embedding dimensions and ``n`` the L2
normalisation (the reference's feature pipeline), G the clean embeddings of the same identity on the
*other* side (the reference perturbs the gallery with the queries as guides: ``side: gallery``; with
the default ``side: query`` the guides are that identity's gallery images). Identities 0 and -1 are
not attacked (the reference skips them). No random start.

Defaults: 16 steps of 1/255 (NAT paper Table 12). The reference uses alpha = 1/255 with Kurakin's
``int(min(eps + 4, 1.25 eps))`` iterations (eps in 0-255 units: 10 at 8/255, 12 at 10/255); set
``steps`` for that. Its L1-mean gradient normalisation only matters with momentum (MI-FGSM) and is
left out. Shared loop and parameter choices: ``natbench.attacks._metric``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from natbench.attacks._metric import MetricAttack


class IFGSM(MetricAttack):
    name = "ifgsm"
    objective_kind = "ama"

    @dataclass(frozen=True)
    class Params:
        steps: int = 16  # iterations (NAT paper Table 12: 16)
        step_size: float = 1 / 255  # absolute step (the reference's alpha = 1 in 0-255 units)
        random_start: bool = False  # the reference starts at x
        eps: float | None = None  # overrides the evaluation eps when set (e.g. 8/255, 10/255 in a suite)
        side: Literal["query", "gallery", "both"] = "query"  # the side the task perturbs
