"""The valid range of every numeric configuration value, checked when a config is read (before any
data is read or any model is built), so ``training.epochs=99999999999999999999999`` or
``nat.omega=-1`` is one line, exit 2.

Ranges are declared here, one line per ``Params``/config class (keyed by its module and qualified
name), so plugin files stay untouched; a plugin of another package declares its own as a class
attribute ``RANGES = {"field": "[0, 1]"}`` on its ``Params`` (which wins over this table).
``tests/test_ranges.py`` fails for any numeric field of a registered plugin or of the task schema
without a range. A range is an interval in the usual notation: ``"[0, 1)"``, ``"(0, inf]"``; a
tuple field's range holds for each item; ``None`` (a field's "use the default") is not checked.

The upper bounds are sanity limits against typos (a value beyond them cannot be meant), not
recommendations; lower bounds are the values below which a method stops being itself (a negative
loss weight turns a regulariser into its opposite, so ``nat.omega`` starts at 0).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

BIG = 100_000  # steps, epochs, iterations
LOSS_WEIGHT = "[0, 10000]"
STEP = "[0, 1]"  # a step size or radius in [0, 1] pixel units
STEPS = f"[0, {BIG}]"
RESTARTS = f"[1, {BIG}]"
FRACTION = "[0, 1]"
LP_EPS = "[0, 10000]"  # a threat model's radius in any norm (L-inf: [0, 1], checked by ThreatCfg.validate)
LP_STEP = "(0, 10000]"

_DEF = "natbench.defenses"
_ATT = "natbench.attacks"
RANGES: dict[str, dict[str, str]] = {
    # ---- task spec (natbench.taskspec)
    "natbench.taskspec.DataCfg": {"val_fraction": "[0, 1)", "test_fraction": "[0, 1)", "split_seed": f"[0, {2**63 - 1}]",
                                  "image_size": "[1, 4096]", "resize": "[1, 8192]", "num_workers": "[0, 256]"},
    "natbench.taskspec.ModelCfg": {"num_classes": "[0, 1000000]", "in_channels": "[1, 64]", "width": "[1, 4096]",
                                   "mean": "[-10, 10]", "std": "(0, 100]"},
    "natbench.taskspec.ProfileCfg": {"epochs": f"[1, {BIG}]", "batch_size": "[1, 1000000]", "lr": "[0, 100]",
                                     "momentum": "[0, 1)", "weight_decay": "[0, 1]", "milestones": STEPS, "gamma": "[0, 10]",
                                     "eval_batch_size": "[1, 1000000]", "lr_points": f"[0, {BIG}]",
                                     "cycle_momentum": "[0, 1)"},
    "natbench.taskspec.SelectionCfg": {"steps": STEPS, "step_size": LP_EPS},
    # L2/L1 radii grow with the input dimension: up to taskspec.MAX_LP_EPS (ThreatCfg.validate keeps L-inf in [0, 1])
    "natbench.taskspec.ThreatCfg": {"eps": LP_EPS, "train_steps": f"[1, {BIG}]", "train_step_size": LP_STEP},
    "natbench.taskspec.NormDefaults": {"eps": LP_EPS, "train_steps": f"[1, {BIG}]", "train_step_size": LP_STEP},
    "natbench.contracts.ThreatModel": {"eps": LP_EPS, "train_steps": f"[1, {BIG}]", "train_step_size": LP_STEP},
    # ---- task kinds
    "natbench.tasks.reid.task.ReIDTask.Params": {"height": "[8, 4096]", "width": "[8, 4096]", "num_instances": "[1, 1000]",
                                                 "label_smooth": "[0, 1)", "triplet_margin": "[0, 100]", "weight_ce": LOSS_WEIGHT,
                                                 "weight_triplet": LOSS_WEIGHT, "max_rank": f"[10, {BIG}]"},
    "natbench.tasks.detection.task.DetectionTask.Params": {"correct_score": FRACTION, "score_thresh": FRACTION,
                                                           "nms_thresh": FRACTION, "detections_per_img": f"[1, {BIG}]"},
    # ---- defenses
    f"{_DEF}.amd.AMD.Params": {"steps": f"[1, {BIG}]", "step_size": STEP, "clean_weight": LOSS_WEIGHT},
    f"{_DEF}.fast_at.FastAT.Params": {"alpha": STEP, "guard_steps": STEPS, "guard_step_size": STEP, "guard_drop": FRACTION},
    f"{_DEF}.free_at.FreeAT.Params": {"m": "[1, 1000]", "step_size": STEP},
    f"{_DEF}.mart.MART.Params": {"beta": LOSS_WEIGHT, "steps": f"[1, {BIG}]", "step_size": STEP, "init_std": STEP},
    f"{_DEF}.mtd.MTD.Params": {"steps": f"[1, {BIG}]", "step_size": STEP, "clean_weight": LOSS_WEIGHT},
    f"{_DEF}.nuat.NuAT.Params": {"lam_max": LOSS_WEIGHT, "hold": STEPS, "init": STEP, "step_size": STEP,
                                 "nuc_batch": "[1, 1000000]"},
    f"{_DEF}.nuat2.NuAT2.Params": {"lam_max": LOSS_WEIGHT, "hold": STEPS, "init": STEP, "step_size": STEP,
                                   "nuc_batch": "[1, 1000000]", "attack_ema": "[0, 1)"},
    f"{_DEF}.pgd_at.PGDAT.Params": {"steps": f"[1, {BIG}]", "step_size": STEP},
    f"{_DEF}.trades.TRADES.Params": {"beta": LOSS_WEIGHT, "steps": f"[1, {BIG}]", "step_size": STEP, "init_std": STEP,
                                     "forwards": "[2, 3]"},
    # ---- regularizers, perturbations, averagers
    "natbench.regularizers.emr.EMR.Params": {"lam": LOSS_WEIGHT},
    "natbench.regularizers.lasso.LASSO.Params": {"lam": LOSS_WEIGHT},
    "natbench.regularizers.mixup.Mixup.Params": {"weight": LOSS_WEIGHT, "ratio": FRACTION},
    "natbench.regularizers.nat.NAT.Params": {"omega": LOSS_WEIGHT, "tau": "(0, 1000]"},
    "natbench.regularizers.nnr.NNR.Params": {"lam": LOSS_WEIGHT},
    "natbench.perturbations.awp.AWP.Params": {"gamma": "[0, 10]", "warmup": STEPS, "proxy_lr": "[0, 100]"},
    "natbench.perturbations.sam.SAM.Params": {"rho": "[0, 100]"},
    "natbench.averagers.ema.EMA.Params": {"decay": "[0, 1]"},
    # ---- attacks
    f"{_ATT}.adaptive.Adaptive.Params": {"steps": STEPS, "restarts": RESTARTS, "rho": FRACTION, "step_size": STEP},
    **{f"{_ATT}.apgd.{c}.Params": {"steps": STEPS, "restarts": RESTARTS, "rho": FRACTION, "eot_iter": f"[1, {BIG}]"}
       for c in ("APGDCE", "APGDDLR")},
    f"{_ATT}.apgd.APGDT.Params": {"steps": STEPS, "restarts": RESTARTS, "rho": FRACTION, "eot_iter": f"[1, {BIG}]",
                                  "n_target_classes": f"[1, {BIG}]"},
    **{f"{_ATT}.autoattack.{c}.Params": {"n_iter": STEPS, "n_target_classes": f"[1, {BIG}]", "n_queries": "[1, 10000000]",
                                         "eot_iter": f"[1, {BIG}]", "bs": "[1, 1000000]"} for c in ("AutoAttack", "AutoAttackRand")},
    f"{_ATT}.autoattack_original.AutoAttackOriginal.Params": {"bs": "[1, 1000000]"},
    f"{_ATT}.corruption.Corruption.Params": {"severity": "[1, 5]", "seed": f"[0, {2**63 - 1}]"},  # seed: hashed (corruptions._derive)
    f"{_ATT}.cw.CWInf.Params": {"steps": STEPS, "step_size": STEP, "restarts": RESTARTS},
    f"{_ATT}.cw_l2.CWL2.Params": {"steps": f"[1, {BIG}]", "binary_search_steps": "[1, 100]", "initial_const": "(0, 1e10]",
                                  "lr": "(0, 100]", "kappa": LOSS_WEIGHT, "eps_grid": LP_EPS},
    f"{_ATT}.dag.DAG.Params": {"steps": STEPS, "gamma": STEP},
    f"{_ATT}._det.DetectionPGD.Params": {"steps": STEPS, "step_size": STEP, "restarts": RESTARTS},  # det-cls, det-loc
    f"{_ATT}.fab.FABT.Params": {"n_target_classes": f"[1, {BIG}]", "n_iter": STEPS, "restarts": RESTARTS,
                                "alpha_max": FRACTION, "eta": "[1, 100]", "beta": FRACTION},
    f"{_ATT}.malt.MALT.Params": {"steps": STEPS, "restarts": RESTARTS, "rho": FRACTION, "eot_iter": f"[1, {BIG}]",
                                 "n_target_classes": f"[1, {BIG}]", "n_tested": f"[1, {BIG}]"},
    f"{_ATT}.fmn.FMN.Params": {"steps": f"[1, {BIG}]", "alpha_max": LP_STEP, "alpha_min": LP_EPS, "gamma": "[0.001, 1)",
                               "eps_grid": LP_EPS},
    f"{_ATT}.fna.FNA.Params": {"steps": STEPS, "step_size": STEP, "eps": STEP},
    f"{_ATT}.gama.GAMAPGD.Params": {"steps": STEPS, "step_size": STEP, "milestones": STEPS, "drop": "(0, 1000]",
                                    "w_reg": LOSS_WEIGHT, "lambda_steps": STEPS, "restarts": RESTARTS},
    f"{_ATT}.ifgsm.IFGSM.Params": {"steps": STEPS, "step_size": STEP, "eps": STEP},
    f"{_ATT}.pgd.PGD.Params": {"steps": STEPS, "step_size": LP_EPS, "restarts": RESTARTS},  # L2 steps may exceed 1
    f"{_ATT}.rap.RAP.Params": {"steps": STEPS, "step_size": STEP, "objectness_thresh": FRACTION, "shape_weight": LOSS_WEIGHT,
                               "shape_target": "[-100, 100]"},
    f"{_ATT}.sma.SMA.Params": {"steps": STEPS, "step_size": STEP, "eps": STEP},
    f"{_ATT}.square.Square.Params": {"n_queries": "[1, 10000000]", "p_init": "(0, 1]", "restarts": RESTARTS},
    f"{_ATT}.transfer.Transfer.Params": {"steps": STEPS, "step_size": STEP, "kappa": LOSS_WEIGHT},
}


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    text: str = ""

    def __contains__(self, v: float) -> bool:
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below


def parse(text: str) -> Range:
    """``"[0, 1)"`` -> Range(0, 1, hi_open=True)."""
    t = text.strip()
    if len(t) < 5 or t[0] not in "[(" or t[-1] not in "])" or "," not in t:
        raise ValueError(f"range {text!r}: write an interval such as '[0, 1)' or '(0, inf]'")
    lo, hi = (float(x.strip()) for x in t[1:-1].split(",", 1))
    if lo > hi:
        raise ValueError(f"range {text!r}: lower bound above the upper bound")
    return Range(lo, hi, t[0] == "(", t[-1] == ")", t)


def key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def ranges_of(cls: type) -> dict[str, str]:
    """The declared ranges of dataclass ``cls``: this table's, overridden by ``cls.RANGES``."""
    own = cls.__dict__.get("RANGES") or {}
    return {**RANGES.get(key(cls), {}), **own}


def check(cls: type, name: str, value: Any, where: str) -> None:
    """Raise a :class:`ConfigError` when ``value`` (a number, or a tuple of them) of field ``name``
    of ``cls`` is outside its declared range."""
    text = ranges_of(cls).get(name)
    if text is None or value is None:
        return
    rng = parse(text)
    for v in _numbers(value):
        if not (isinstance(v, float) and math.isnan(v)) and v in rng:
            continue
        raise ConfigError(f"{where}: {v!r} is outside the valid range {rng.text}; choose a value in {rng.text} "
                          f"(declared in natbench.ranges)")


def _numbers(value: Any):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v)


def numeric_fields(cls: type) -> list[str]:
    """Fields of dataclass ``cls`` whose type holds an int or a float (plain, optional or in a tuple)."""
    hints = typing.get_type_hints(cls)

    def numeric(tp: Any) -> bool:
        if tp in (int, float):
            return True
        return any(numeric(a) for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis)

    return [f.name for f in dataclasses.fields(cls) if f.init and numeric(hints[f.name])]
