"""One-parameter ablations (``natbench ablation``): a defense trained once per value of one parameter
(as ``natbench run --sweep``: :func:`natbench.resolve.resolve` with ``sets=[f"{param}={value}"]``,
dependencies such as NAT's adversary reused by provenance hash), then best/last clean and robust
accuracy plotted against the value."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..analysis import plots
from ..errors import ConfigError
from ..safety import atomic_write
from .runs import slug


@dataclass
class AblationResult:
    frame: Any  # pandas DataFrame (natbench.analysis.ablation.ablation_frame)
    robust_label: str
    png: Path
    csv: Path
    run_ids: list[str]


def parse_values(values: str | Sequence[str]) -> list[str]:
    """``"0,0.02,0.04"`` (or a list of such strings) -> ``["0", "0.02", "0.04"]``; each value once."""
    items = [values] if isinstance(values, str) else list(values)
    out = [v.strip() for item in items for v in str(item).split(",")]
    if not out or not all(out):
        raise ConfigError(f"--values {values!r}: expected v1,v2,..., e.g. --values 0,0.02,0.04,0.06")
    if len(set(out)) != len(out):
        raise ConfigError(f"--values {values!r}: a value is listed twice; list each value once")
    return out


def ablation(task: str, defense: str, param: str, values: str | Sequence[str], *, root: Path,
             data_root: Path | None = None, profile: str | None = None, seed: int = 0, sets: Sequence[str] = (),
             suite: str | None = None, device: torch.device | str = "cpu", reporter: Any = None,
             registry: Any = None, robust: str | None = None, db: str | None = None) -> AblationResult:
    """Train ``defense`` on ``task`` once per value of ``param`` (every value resolved and checked
    before the first trains; finished identical runs and dependencies are reused), then write
    ``<root>/ablation-<task>-<param>.png`` and ``.csv``: best/last clean and robust metric per value."""
    from ..analysis.ablation import ablation_frame
    from ..registry import get_registry
    from ..resolve import resolve, task_kind_cls
    from ..runner import Reporter, Runner

    if not param or "=" in param or "." not in param:
        raise ConfigError(f"--param {param!r}: expected a config key such as nat.omega or training.epochs")
    vals = parse_values(values)
    reg = registry or get_registry()
    resolved = [resolve(reg, task, defense, profile=profile, seed=seed, sets=[*sets, f"{param}={v}"], suite=suite)
                for v in vals]
    if len({r.config_hash for r in resolved}) != len(resolved):
        raise ConfigError(f"--values {','.join(vals)}: two values of {param} resolve to the same configuration "
                          f"(e.g. 0.06 and 6e-2); list each value once")
    runner = Runner(Path(root), data_root, torch.device(device), reporter or Reporter(), reg, db=db)
    ids = [runner.run(r) for r in resolved]
    metric = getattr(task_kind_cls(reg, resolved[0].spec), "headline_metric", "accuracy")
    df, label = ablation_frame(runner.store, list(zip(vals, ids)), metric=metric, robust=robust)
    name = slug(f"ablation-{resolved[0].task}-{param}")
    png = plots.ablation_plot(df, param, Path(root) / f"{name}.png", label, metric)
    csv = Path(root) / f"{name}.csv"
    atomic_write(csv, lambda tmp: df.assign(param=param, robust=label).to_csv(tmp, index=False))
    return AblationResult(df, label, png, csv, ids)
