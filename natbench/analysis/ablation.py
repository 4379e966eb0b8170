"""A one-parameter ablation read back from the store (NAT paper Fig. 2: lambda against best/last clean
and robust accuracy). Training the values is :func:`natbench.report.ablation`; this module only
reads results, so it can be checked on a hand-filled store."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..errors import RunError

#: the robust column the ablation prefers (the paper's Fig. 2 reports PGD-20 robustness)
PREFERRED_ROBUST = "pgd-20"


def ablation_frame(store, runs: Sequence[tuple[str, str]], metric: str = "accuracy",
                   robust: str | None = None) -> tuple[pd.DataFrame, str]:
    """``(frame, robust label)`` for ``runs`` = ``[(value, run_id), ...]`` (in order).

    Columns: ``value``, ``run_id``, ``best_clean``, ``best_robust``, ``last_clean``, ``last_robust``
    (``metric`` x 100). Robust is ``robust`` when given, else ``pgd-20`` when every run has it, else
    the per-sample worst case over every stored evaluation of the checkpoint (clean included,
    :meth:`natbench.store.Store.worst_case`); the label says which.
    """
    res = store.results()
    rows = []
    have = [set(res.loc[(res["run_id"] == rid) & (res["metric"] == metric), "attack"]) for _, rid in runs]
    if robust is None:
        robust = PREFERRED_ROBUST if have and all(PREFERRED_ROBUST in h for h in have) else "worst-case"
    for (value, rid), attacks in zip(runs, have):
        if not attacks:
            raise RunError(f"ablation: run '{rid}' has no '{metric}' results in the results store")
        row = {"value": value, "run_id": rid}
        sel = res[(res["run_id"] == rid) & (res["metric"] == metric)]
        for ck in ("best", "last"):
            vals = sel[sel["checkpoint"] == ck].set_index("attack")["value"]
            row[f"{ck}_clean"] = 100 * float(vals.get("clean", float("nan")))
            if robust == "worst-case":
                try:
                    row[f"{ck}_robust"] = 100 * store.worst_case(rid, ck)
                except (RunError, ValueError):
                    row[f"{ck}_robust"] = float("nan")
            else:
                row[f"{ck}_robust"] = 100 * float(vals.get(robust, float("nan")))
        rows.append(row)
    label = ("per-sample worst case over clean and every stored attack" if robust == "worst-case"
             else robust.upper() if robust.startswith("pgd") else robust)
    df = pd.DataFrame(rows, columns=["value", "run_id", "best_clean", "best_robust", "last_clean", "last_robust"])
    num = ["best_clean", "best_robust", "last_clean", "last_robust"]
    df[num] = df[num].astype(float).round(2)
    return df, label
