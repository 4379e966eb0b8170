"""What a report is made of: its options, the runs it shows (record, resolved config, history, label)
and their models, loaded through :mod:`natbench.run_model` (no :class:`~natbench.runner.Runner`)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import RunError

REPORT_DIR = "report"
REPORT_PAGE = "index.html"


@dataclass
class ReportOptions:
    """What the analyses of a report compute (defaults: the whole test set, PGD-20 as the suite's)."""

    checkpoint: str = "best"  # checkpoint analysed: best | last
    attack_steps: int = 20  # PGD steps for "under attack" (sparsity, adversarial features); step eps/4
    eps_multiples: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)  # eps curve, x task eps
    eps_steps: int = 20  # PGD steps per point of the eps curve
    max_samples: int | None = None  # test samples used by the analyses (None: all)
    embed_samples: int = 1000  # at most this many samples are embedded in 2-D
    embed_method: str = "auto"  # auto (UMAP if importable, else t-SNE) | umap | tsne
    surface_index: int = 0  # test sample whose loss surface is drawn
    surface_n: int = 21  # grid points per axis
    surface_span: float = 2.0  # grid half-width in units of eps
    boundary_row: int = 0  # class whose boundary distances are drawn as bars (NAT Fig. 6: class 0)
    seed: int = 0  # attacks' random starts, embedding, orthogonal direction


@dataclass
class ReportEnv:
    """Where a report reads from and computes on: the results root, the (read-only) store, the data
    root, the device, the registry and the progress reporter."""

    root: Path
    store: Any  # natbench.store.Store, opened read-only
    device: torch.device
    data_root: Path | None
    registry: Any
    reporter: Any


@dataclass
class ReportRun:
    run_id: str
    record: Any  # natbench.store.RunRecord
    resolved: Any  # natbench.resolve.Resolved
    history: list[dict]
    label: str = ""
    model: Any = None
    task: Any = None
    data: dict = field(default_factory=dict)


def load_run(env: ReportEnv, run_id: str) -> ReportRun:
    """A complete run of the store: its record, resolved config (config.yaml) and per-epoch history."""
    from ..run_model import run_from_dir

    rec = env.store.get_run(run_id)
    if rec is None:
        raise RunError(f"run '{run_id}' is not a complete run in the results store under {env.root}; "
                       f"list runs with: natbench leaderboard --format csv")
    resolved = run_from_dir(env.root, run_id, env.registry)
    path = env.root / run_id / "record.json"
    history = json.loads(path.read_text()).get("history", []) if path.is_file() else []
    return ReportRun(run_id, rec, resolved, history)


def label_runs(runs: list[ReportRun]) -> None:
    for r in runs:
        rec = r.record
        r.label = rec.defense + (f" [{rec.variant}]" if rec.variant else "") + f" s{rec.seed}"
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    for r in runs:
        if counts[r.label] > 1:
            r.label += f" ({r.run_id[-8:]})"


def load_models(runs: list[ReportRun], env: ReportEnv, checkpoint: str) -> None:
    """Each run's task (one task object, data read once, per distinct task config) and its
    ``checkpoint``'s model in eval mode, verified against the sha256 the store recorded."""
    from ..run_model import build_task, load_model

    tasks: dict[str, Any] = {}
    for r in runs:
        key = json.dumps(r.resolved.config["task"], sort_keys=True, default=str)
        if key not in tasks:
            tasks[key] = build_task(r.resolved, env.data_root, env.registry)
        r.task = tasks[key]
        ckpt = env.root / r.run_id / f"{checkpoint}.pt"
        if not ckpt.is_file():
            raise RunError(f"run '{r.run_id}': no {ckpt}; the report needs the run's {checkpoint} checkpoint "
                           f"(try --checkpoint {'last' if checkpoint == 'best' else 'best'})")
        r.model = load_model(r.task, env.root, r.run_id, checkpoint, device=env.device, store=env.store)
        r.model.eval()


def headline_metric(r: ReportRun, store: Any = None) -> str:
    """The run's headline metric (accuracy, re-id's and detection's mAP): as recorded with the run
    (:mod:`natbench.leaderboard_facts`), else its task kind's ``headline_metric``."""
    from ..leaderboard_facts import headline_metric as recorded

    return recorded(store, r.run_id, r.resolved.spec)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")
