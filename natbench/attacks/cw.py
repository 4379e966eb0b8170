"""CW-inf: the PGD loop of :mod:`natbench.attacks.pgd` ascending the Carlini-Wagner margin.

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017 (margin loss);
L-inf PGD of Madry et al., ICLR 2018. The "CW-inf" evaluation of adversarial-training papers follows
``zjfheart/Friendly-Adversarial-Training : attack_generator.py`` / ``attack_test.py`` (same as
sunblaze-ucb/curriculum-adversarial-training-CAT): margin ``-clamp(z_y - max_{j!=y} z_j + 50, 0)``,
30 steps of eps/4, uniform random start. The task builds that margin (objective kind ``"cw"``, see
:func:`natbench.attacks._base.cw_margin_loss`); this class only runs the loop.

Threat model: ``||x_adv - x||_inf <= eps``, images in [0, 1]. Not ``torchattacks.CW``, which is the
L2 Carlini-Wagner attack.
"""
from __future__ import annotations

from dataclasses import dataclass

from natbench.attacks.pgd import PGD


class CWInf(PGD):
    """CW-inf (Carlini & Wagner 2017 margin, PGD of Madry et al. 2018); defaults 30 steps of eps/4."""

    name = "cw-inf"
    objective_kind = "cw"

    @dataclass(frozen=True)
    class Params(PGD.Params):
        steps: int = 30  # gradient steps (the FAT/CAT "CW-30" protocol)
        step_size: float | None = None  # None: eps/4
        random_start: bool = True  # U(-eps, eps) start
        restarts: int = 1  # keep, per sample, the restart with the highest final loss
        early_stop: bool = False  # pgd's opt-in; on, it needs objective: logits, whose loss is CE, not the CW margin
