"""The plugin contracts (natbench.contracts): each component class is an instance of its kind's protocol,
its Params are frozen dataclasses with defaults, and its class attributes are the documented ones."""
from __future__ import annotations

import dataclasses

import pytest

from natbench.averagers.ema import EMA
from natbench.contract_check import problems
from natbench.contracts import Defense, Regularizer, WeightPerturbation
from natbench.defenses.fast_at import FastAT
from natbench.defenses.free_at import FreeAT
from natbench.defenses.nuat import NuAT
from natbench.defenses.nuat2 import NuAT2
from natbench.errors import ConfigError
from natbench.perturbations.sam import SAM
from natbench.regularizers.mixup import Mixup

from helpers import registry_with

NEW_ENTRIES = {  # what natbench/registry.yaml gets for these plugins (added here if it lacks them)
    ("defenses", "nuat"): "natbench.defenses.nuat:NuAT",
    ("defenses", "nuat2"): "natbench.defenses.nuat2:NuAT2",
    ("averagers", "ema"): "natbench.averagers.ema:EMA",
}


def test_contracts_and_defaults():
    for cls in (FastAT, FreeAT):
        assert isinstance(cls(), Defense)
        assert cls.ce_on == frozenset({"adv"}) and cls.select_on == "robust"
        assert {"x_adv", "logits_adv"} <= cls.provides
    assert isinstance(Mixup(), Regularizer) and isinstance(SAM(), WeightPerturbation)
    assert Mixup.needs_cache == frozenset() and Mixup.dependencies == ()
    for cls in (FastAT, FreeAT, SAM, Mixup):
        assert cls.Params.__dataclass_params__.frozen
        assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(cls.Params))
    assert (FastAT.name, FreeAT.name, SAM.name, Mixup.name) == ("fast-at", "free-at", "sam", "mixup")
    p = FastAT.Params()
    assert p.alpha is None and p.attack_bn == "train" and p.guard_steps == 5 and p.guard_drop == 0.2 and p.early_stop
    assert FreeAT().replays == 8 and FreeAT(FreeAT.Params(m=3)).replays == 3
    assert SAM.Params().rho == 0.05 and not SAM.Params().adaptive
    assert Mixup.Params().ratio == 0.7 and Mixup.Params().weight == 1.0
    for bad in (lambda: FastAT(FastAT.Params(alpha=-1.0)), lambda: FreeAT(FreeAT.Params(m=0)),
                lambda: SAM(SAM.Params(rho=-0.1)), lambda: Mixup(Mixup.Params(ratio=1.5))):
        with pytest.raises(ConfigError):
            bad()


def test_contracts_and_class_attributes():
    reg = registry_with(NEW_ENTRIES)
    for (kind, name) in NEW_ENTRIES:
        assert problems(reg.entry(kind, name), reg) == [], name
    for cls in (NuAT, NuAT2):
        assert cls.ce_on == frozenset({"clean"}) and cls.select_on == "robust"
        assert {"x_adv", "logits_clean", "logits_adv"} <= cls.provides and cls.requires == frozenset({"logits"})
    assert (NuAT.Params().lam_max, NuAT.Params().hold, NuAT2.Params().lam_max, NuAT2.Params().hold) == (4.5, 10, 4.0, 0)
    assert EMA.Params().decay == 0.9998 and NuAT2.Params().attack_ema == 0.0
