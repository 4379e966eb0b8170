"""``natbench sweep``: plan the grid (natbench.sweep), run its stages, print the summary table."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from .cli_output import Table, out
from .errors import ConfigError


def csv_values(values: List[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (options given comma-separated or repeated)."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def sweep(tasks: List[str], defenses: List[str], seeds: List[str], set_grid: List[str], set_: List[str],
          profile: Optional[str], suite: Optional[str], executor: str, parallel: int, slurm: dict, log_dir: Optional[Path],
          device: str, root: Path, db: Optional[str], data_root: Optional[str], threads: Optional[int]) -> int:
    """Plan and run the sweep; prints what it will do and the summary; returns the number of failed runs.
    ``slurm``: make_executor's keyword options (partition, gpus, time_min, array_parallelism, cpus, mem_gb)."""
    from .registry import get_registry
    from .resolve import data_root as resolve_data_root
    from .store import Store, store_exists, store_url
    from .sweep import make_executor, plan_sweep, run_sweep
    from .ui import RichReporter, setup_logging

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda")
    try:
        seed_list = [int(v) for v in csv_values(seeds)]
    except ValueError:
        raise ConfigError(f"--seeds {','.join(seeds)}: expected integers, e.g. --seeds 0,1,2") from None
    from .threads import apply

    reg = get_registry()
    n_threads = apply(threads)  # exported: every job (subprocess, slurm) uses the same
    droot = resolve_data_root(data_root)
    store = Store(store_url(root, db)) if store_exists(root, db) else None
    plan = plan_sweep(reg, store, csv_values(tasks), csv_values(defenses), seed_list, set_grid=set_grid, sets=set_,
                      profile=profile, suite=suite)
    ex = make_executor(executor, log_dir or root / "sweep-logs", **slurm)
    stages = plan.stages()
    skipped = sum(c.status == "skipped" for c in plan.cells)
    out.print(f"sweep: {len(plan.cells)} runs ({skipped} already complete), "
              f"{sum(len(st) for st in stages)} to run in {len(stages)} stage(s), executor {executor}, "
              f"{n_threads} thread(s) per job")
    if stages:
        setup_logging()
        run_sweep(plan, ex, root=root, db=db, data_root=str(droot) if droot else None, device=device,
                  parallel=parallel, reporter=RichReporter())
    table = Table("run", "stage", "status", "seconds", "run id", title="sweep", title_justify="left")
    colour = {"done": "green", "skipped": "cyan", "failed": "red", "pending": "yellow"}
    for c in sorted(plan.cells, key=lambda c: (-c.stage, c.label)):
        table.add_row(c.label, "dependency" if c.stage else "grid", f"[{colour[c.status]}]{c.status}[/]",
                      f"{c.seconds:.1f}" if c.seconds else "", c.run_id)
    out.print(table)
    failed = [c for c in plan.cells if c.status == "failed"]
    for c in failed:
        out.print(f"[red]failed[/red] {c.label}: {c.error}" + (f"\n  logs: {' '.join(c.logs)}" if c.logs else ""))
    return len(failed)
