"""``natbench eval``: a finished run evaluated again (:func:`natbench.suite.add_suite`, the path
``natbench run`` takes too), or an outside model (:func:`natbench.api.evaluate`); and how a command
runs data-parallel (torchrun ranks, rank 0 reporting)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from .cli_output import print_leaderboard
from .errors import ConfigError


def eval_run(run_id: str, suite: Optional[str], checkpoint: str, device: str, root: Path, db: Optional[str],
             data_root: Optional[str], eval_bf16: bool, force: bool, threads: Optional[int],
             threat_model: Optional[str] = None) -> None:
    """``natbench eval RUN_ID``: ``suite`` (default: the run's own) on ``checkpoint`` (best, last or both),
    under ``threat_model`` (``NORM:EPS``; default the run's own; :mod:`natbench.threats`)."""
    from .config import from_dict
    from .registry import get_registry
    from .resolve import check_suite, data_root as resolve_data_root, load_suite, task_kind_cls
    from .runner import CHECKPOINTS, Runner, pick_device, run_from_dir
    from .taskspec import SuiteSpec
    from .threads import apply
    from .ui import RichReporter, setup_logging

    if checkpoint not in (*CHECKPOINTS, "both"):
        raise ConfigError(f"--checkpoint {checkpoint!r}: expected best, last or both")
    from .threats import parse

    threat = parse(threat_model) if threat_model is not None else None
    reg = get_registry()
    apply(threads)
    r = run_from_dir(root, run_id, reg)
    s = load_suite(reg, suite) if suite else from_dict(SuiteSpec, r.config["suite"], "suite")
    spec = r.spec  # the suite is checked in the norm it will run in: --threat-model's, else the run's
    if threat is not None:
        import dataclasses

        check_norm(reg, s, threat[0])
        from .attacks.corruption import is_corruption

        corr = [a.id for a in s.attacks if is_corruption(reg.load("attacks", a.attack))]
        if corr:
            raise ConfigError(f"--threat-model {threat_model}: corruptions do not depend on the threat model (suite.{corr[0]}); "
                              f"evaluate them without --threat-model (natbench eval RUN --suite corruptions)")
        spec = dataclasses.replace(spec, threat_model=dataclasses.replace(spec.threat_model, norm=threat[0]))
    check_suite(reg, s, r.plan, task_kind_cls(reg, r.spec), spec)
    setup_logging()
    from .distributed import Dist

    runner = Runner(root, resolve_data_root(data_root), pick_device(device), RichReporter(), reg, eval_bf16=eval_bf16,
                    db=db, dist=quiet_unless_main(Dist.from_env(device)))
    if runner.store.get_run(run_id) is None:
        from .errors import RunError

        raise RunError(f"run '{run_id}' is not complete in {runner.store.path}; finish it first with natbench run")
    cks = CHECKPOINTS if checkpoint == "both" else (checkpoint,)
    from .suite import add_suite

    add_suite(runner, r, run_id, s, cks, force=force, note_numerics=True, threat=threat)  # files verified before compute
    if runner.dist.is_main:  # data-parallel: rank 0 records and prints
        own = (getattr(r.spec.threat_model, "norm", "linf"), float(r.spec.threat_model.eps))
        print_leaderboard(runner.store, r.task, "table", threat_model=threat or own)
        from .leaderboard_corruptions import print_tables

        print_tables(runner.store, r.task)  # the corruptions table when the task has corruption results
        from .leaderboard_minnorm import print_tables as print_minnorm

        print_minnorm(runner.store, r.task)  # accuracy at several eps when a minimum-norm attack was run


def check_norm(reg, suite, norm: str) -> None:
    """Every attack of ``suite`` supports ``norm`` (its class's ``norms``), before anything is computed."""
    for a in suite.attacks:
        supported = tuple(getattr(reg.load("attacks", a.attack), "norms", ("linf",)))
        if norm not in supported:
            raise ConfigError(f"--threat-model {norm}: attack '{a.attack}' (suite.{a.id}) supports {', '.join(supported)} only; "
                              f"pick a suite for {norm} (natbench list attacks) or another --threat-model")


def eval_external(run_id, task, model, weights, name, normalize, suite, device, root: Path, db, data_root) -> None:
    """``natbench eval --task T --model SPEC ...`` (natbench.api.evaluate; docs/external.md)."""
    if run_id is not None or task is None or model is None:
        raise ConfigError("natbench eval: an outside model needs --task and --model (and no RUN_ID); "
                          "e.g. natbench eval --task digits --model my_model.py:build --weights w.pt")
    from .api import evaluate
    from .ui import RichReporter, setup_logging

    setup_logging()
    res = evaluate(model, task, suite, data_root=data_root, weights=weights, name=name, normalize=normalize,
                   root=root, db=db, device=device, reporter=RichReporter())
    from .store import Store, store_url

    print_leaderboard(Store(store_url(root, db)), res.task, "table")


def quiet_unless_main(dist):
    """Data-parallel ranks other than 0 log warnings only (rank 0 reports progress and results)."""
    if not dist.is_main:
        import logging

        logging.getLogger().setLevel(logging.WARNING)
    return dist


def torchrun(argv: list[str], nproc: int) -> int:
    """Run the command ``argv`` again under ``torchrun --standalone --nproc-per-node N -m natbench``."""
    import subprocess

    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "natbench", *args]
    return subprocess.call(cmd)
