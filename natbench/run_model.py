"""The model of a finished run, without a :class:`~natbench.runner.Runner`: the run's resolved config
(``<root>/<run_id>/config.yaml``), its task object and a checkpoint's weights, checked first against
the sha256 the results store recorded for the file (:mod:`natbench.integrity`).

``natbench report`` loads its runs' models here; :meth:`natbench.runner.Runner.load_model` (dependencies,
transfer surrogates) loads a checkpoint through :func:`load_model` too, so there is one way to read a
run's weights. Nothing here trains, evaluates or writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .registry import Registry, get_registry
from .resolve import Resolved, from_run_config, task_kind_cls
from .safety import load_weights, run_dir as safe_run_dir

#: the fix named by an unreadable checkpoint's error
RETRAIN = "restore the file, or train the run again with: natbench run ... --force"


def run_from_dir(root: Path, run_id: str, registry: Registry) -> Resolved:
    """The resolved config of an existing run directory."""
    from .config import load_yaml
    from .errors import RunError

    path = safe_run_dir(root, run_id) / "config.yaml"  # the id is checked before any file is opened
    if not path.is_file():
        raise RunError(f"run '{run_id}': no {path}; list runs with: natbench leaderboard --format csv")
    return from_run_config(registry, load_yaml(path))


def build_task(r: Resolved, data_root: Path | None = None, registry: Registry | None = None) -> Any:
    """The task object of ``r`` (its kind's class on the run's spec; data is read lazily by the task)."""
    return task_kind_cls(registry or get_registry(), r.spec)(r.spec, data_root)


def load_model(task: Any, root: Path, run_id: str, checkpoint: str, *, device: torch.device | str = "cpu",
               store: Any = None, verified: bool = False) -> torch.nn.Module:
    """``task.build_model()`` on ``device`` with the weights of ``<root>/<run_id>/<checkpoint>.pt``.

    When ``store`` (a :class:`natbench.store.Store`) holds ``run_id`` as a finished run, the file is
    first checked against the sha256 recorded with its results (a changed file is a one-line error),
    unless the caller has ``verified`` it already. A run the store does not know (a dependency
    handed on before its own record) is loaded as it is."""
    device = torch.device(device)
    model = task.build_model().to(device)
    if not verified and store is not None and store.get_run(run_id) is not None:  # a finished run's file
        from .integrity import verify

        verify(store, run_id, Path(root) / run_id, (checkpoint,))
    load_weights(model, Path(root) / run_id / f"{checkpoint}.pt", f"run {run_id}: checkpoint", RETRAIN, device)
    return model


@dataclass
class RunModel:
    """A finished run's resolved config, task object and model (eval mode)."""

    resolved: Resolved
    task: Any
    model: torch.nn.Module


def load_run(root: Path, run_id: str, checkpoint: str = "best", *, registry: Registry | None = None,
             data_root: Path | None = None, device: torch.device | str = "cpu", store: Any = None,
             task: Any = None) -> RunModel:
    """Resolve ``run_id`` from its directory, build its task (or use ``task``, e.g. one shared by runs
    of the same task config) and load its ``checkpoint`` (:func:`load_model`); the model is in eval mode."""
    reg = registry or get_registry()
    r = run_from_dir(Path(root), run_id, reg)
    task = task if task is not None else build_task(r, data_root, reg)
    model = load_model(task, root, run_id, checkpoint, device=device, store=store)
    model.eval()
    return RunModel(r, task, model)
