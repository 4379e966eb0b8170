"""The RobustBench model zoo (optional extra ``natbench[robustbench]``; see docs/external.md).

``robustbench:<model name>`` builds the zoo architecture registered for the task's dataset and threat
model (:func:`robustbench_names`); with ``--weights`` the local file is loaded into it and nothing is
downloaded, without it ``robustbench.utils.load_model`` downloads the published checkpoint.

robustbench 1.1.1 (PyPI) imports ``autoattack`` (the git package of Croce & Hein), which PyPI ships as
``pyautoattack``; :func:`import_robustbench` makes the one visible under the other's name when only
``pyautoattack`` is installed. It also imports ``pkg_resources`` (setuptools < 81).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError

#: task dataset -> RobustBench ``BenchmarkDataset`` value; norm -> ``ThreatModel`` value
RB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
RB_THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}


def _one_line(e: BaseException) -> str:
    from .external import _one_line as one

    return one(e)


def import_robustbench() -> tuple[Any, Any, Any]:
    """``(model_dicts, BenchmarkDataset, ThreatModel)`` from the robustbench package."""
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        aa = importlib.import_module("pyautoattack")  # PyPI's name of the package robustbench imports as autoattack
        sys.modules.setdefault("autoattack", aa)
        sys.modules.setdefault("autoattack.state", importlib.import_module("pyautoattack.state"))
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as e:
        raise ConfigError(f"--model robustbench:...: the robustbench package cannot be imported ({_one_line(e)}); "
                          f"pip install 'natbench[robustbench]' (see docs/external.md)") from None
    return model_dicts, BenchmarkDataset, ThreatModel


def robustbench_names(task_spec: Any) -> tuple[str, str]:
    """``(dataset, threat_model)`` as RobustBench names them for a task: its ``data.dataset``
    (cifar10, cifar100, imagenet) and threat-model norm (linf -> Linf, l2 -> L2)."""
    ds, norm = task_spec.data.dataset, task_spec.threat_model.norm
    if ds not in RB_DATASETS:
        raise ConfigError(f"--model robustbench:...: RobustBench has no zoo for dataset '{ds}' (task {task_spec.task}); "
                          f"it covers {', '.join(RB_DATASETS)}")
    if norm not in RB_THREATS:
        raise ConfigError(f"--model robustbench:...: RobustBench has no '{norm}' threat model; it has {', '.join(RB_THREATS.values())}")
    return RB_DATASETS[ds], RB_THREATS[norm]


def robustbench_model(spec: Any, task_spec: Any, weights: Path | None, model_dir: Path) -> nn.Module:
    model_dicts, BenchmarkDataset, ThreatModel = import_robustbench()
    dataset, threat = robustbench_names(task_spec)
    zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    if spec.target not in zoo:
        from .errors import suggest

        raise ConfigError(f"--model {spec.text}: no RobustBench {dataset}/{threat} model '{spec.target}'.{suggest(spec.target, zoo)}")
    if weights is not None:  # the zoo architecture, the local weights: nothing downloaded
        return zoo[spec.target]["model"]()
    from robustbench.utils import load_model

    try:
        return load_model(model_name=spec.target, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except Exception as e:  # noqa: BLE001 - a download or a checkpoint failure
        raise ConfigError(f"--model {spec.text}: robustbench.load_model failed ({_one_line(e)}); "
                          f"download the weights elsewhere and pass them with --weights") from None
