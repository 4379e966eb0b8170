"""What a run records for its readers (the leaderboard, the report), so that they read it instead of
deriving it again from code that may have changed since: the metrics its task kind shows and its
headline metric, and the attack and parameters of every escalated evaluation (an attack natbench
added because a sanity check failed, :data:`natbench.checks.ESCALATIONS`) as it was run.

The facts are one JSON object per run in the store's key/value table ``natbench_meta`` under the key
``facts/<run_id>``, written in the transaction that writes the run's results
(:meth:`natbench.store.Store.record_run` replaces them, :meth:`~natbench.store.Store.add_results`
merges new escalations in, :meth:`~natbench.store.Store.delete_run` drops them)::

    {"metrics": ["mAP", "rank1"], "headline_metric": "mAP",
     "escalations": {"escalated-restarts": {"attack": "pgd", "params": {"restarts": 10, "steps": 50}}}}

An evaluation under another threat model than the run's own (``natbench eval --threat-model``) adds
``"threats": {"<threat key>": {"suite": "autoattack", "attacks": {"aa": "autoattack"}}}`` (merged
key by key): the suite it was evaluated with there, which the run's config does not hold.

Nothing else in the store changes: no table, column, hash or run id is new.

Legacy runs (recorded before the facts were) have none; the readers fall back to what they did
before: the metrics from the run's task kind class (``LEADERBOARD_METRICS``, else ``headline_metric``,
else accuracy), an escalation's attack from :data:`natbench.checks.ESCALATIONS` with the restarts
PGD's steps taken as the largest ``steps`` written in the run's configured suite (20 without a PGD).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterable

log = logging.getLogger(__name__)

PREFIX = "facts/"
#: the leaderboard's metrics when nothing says otherwise
DEFAULT_METRICS = ("accuracy",)


def kind_metrics(kind: Any) -> tuple[str, ...]:
    """The metrics a task kind (class or instance) shows on the leaderboard: ``LEADERBOARD_METRICS``
    (re-id: mAP and rank-1), else its ``headline_metric``."""
    return tuple(getattr(kind, "LEADERBOARD_METRICS", (getattr(kind, "headline_metric", "accuracy"),)))


def facts(task: Any, suite: Any = None, results: Iterable[Any] = (), registry: Any = None) -> dict:
    """The facts of a run about to be written: ``task`` (its task object or kind class) gives the
    metrics; ``suite`` (the :class:`~natbench.taskspec.SuiteSpec` just evaluated) and ``results`` (its
    :class:`~natbench.store.ResultRow` s) give the escalated evaluations, with the parameters the
    runner gave them: :func:`natbench.checks.escalations` on the suite's attacks and the step counts of
    its PGD attacks (their params with the attack's defaults), as :meth:`Runner.evaluate` calls it."""
    out: dict[str, Any] = {"metrics": list(kind_metrics(task)),
                           "headline_metric": str(getattr(task, "headline_metric", "accuracy"))}
    ran = {getattr(x, "attack", None) for x in results}
    if suite is not None and any(isinstance(a, str) and a.startswith("escalated-") for a in ran):
        try:
            out["escalations"] = _escalations(task, suite, ran, registry)
        except Exception:  # noqa: BLE001 - never lose a finished run's results over a fact: read as legacy
            log.warning("could not record the escalations of the run; the leaderboard derives them", exc_info=True)
    return out


def _escalations(task: Any, suite: Any, ran: set, registry: Any) -> dict[str, dict]:
    from .checks import ESCALATIONS, escalations
    from .config import from_dict
    from .registry import get_registry

    reg = registry or get_registry()
    attacks = {a.id: a.attack for a in suite.attacks}
    steps = {a.id: from_dict(reg.load("attacks", a.attack).Params, a.params, f"suite.{a.id}.params").steps
             for a in suite.attacks if a.attack == "pgd"}
    norm = getattr(getattr(task, "threat", None), "norm", "linf")  # escalations run in the run's norm only
    planned = escalations(set(ESCALATIONS), attacks, steps, getattr(task, "OBJECTIVES", ()), norm, reg)
    return {aid: {"attack": name, "params": params} for aid, name, params in planned if aid in ran}


def put(conn: Any, run_id: str, new: dict | None, *, replace: bool) -> None:
    """Write ``new`` as the facts of ``run_id`` inside the store's open transaction ``conn``;
    ``replace``: drop earlier facts first (a run recorded again, deleted: ``new`` None), else merge
    ``new``'s escalations into the stored ones (an evaluation added to the run)."""
    from sqlalchemy import text

    key = PREFIX + run_id
    old = None
    if not replace:
        old = conn.execute(text("SELECT value FROM natbench_meta WHERE key = :k"), {"k": key}).scalar()
    merged = dict(new or {})
    if old is not None:
        prev = json.loads(old)
        merged = {**prev, **merged, "escalations": {**prev.get("escalations", {}), **merged.get("escalations", {})},
                  "threats": {**prev.get("threats", {}), **merged.get("threats", {})}}
        for k in ("escalations", "threats"):
            if not merged[k]:
                del merged[k]
    if old is not None or replace:
        conn.execute(text("DELETE FROM natbench_meta WHERE key = :k"), {"k": key})
    if merged:
        conn.execute(text("INSERT INTO natbench_meta (key, value) VALUES (:k, :v)"),
                     {"k": key, "v": json.dumps(merged, sort_keys=True)})


def threat_suite(suite: Any, key: str) -> dict:
    """The facts entry of an evaluation of ``suite`` (a SuiteSpec) under the threat-model key ``key``."""
    return {"threats": {key: {"suite": str(getattr(suite, "suite", "") or ""),
                              "attacks": {a.id: a.attack for a in getattr(suite, "attacks", ())}}}}


def get(store: Any, run_id: str) -> dict:
    """The recorded facts of ``run_id`` (``{}`` for a run recorded before facts were, or a store
    object without them)."""
    read = getattr(store, "meta", None)
    if read is None:
        return {}
    try:
        value = read(PREFIX + run_id)
        return json.loads(value) if value else {}
    except Exception:  # noqa: BLE001 - an unreadable value reads as a legacy run
        return {}


# -- the readers' view, with the legacy fallback ---------------------------------------------------


def metrics(store: Any, run_id: str) -> tuple[str, ...]:
    """The leaderboard metrics of ``run_id``'s task: recorded, else from its task kind class
    (legacy), else ``("accuracy",)`` (an old store, a plugin kind that is gone)."""
    recorded = get(store, run_id).get("metrics")
    if recorded:
        return tuple(recorded)
    try:
        from .registry import get_registry

        kind = store.get_run(run_id).config["task"]["kind"]
        cls = get_registry().load("task_kinds", kind)
    except Exception:  # noqa: BLE001 - an old store or a plugin kind that is gone: plain accuracy
        return DEFAULT_METRICS
    return kind_metrics(cls)


def headline_metric(store: Any, run_id: str, spec: Any) -> str:
    """The headline metric of ``run_id``: recorded, else its task kind's (``spec``: the run's
    :class:`~natbench.taskspec.TaskSpec`), else accuracy."""
    recorded = get(store, run_id).get("headline_metric") if store is not None else None
    if recorded:
        return str(recorded)
    try:
        from .registry import get_registry
        from .resolve import task_kind_cls

        return getattr(task_kind_cls(get_registry(), spec), "headline_metric", "accuracy")
    except Exception:  # noqa: BLE001 - a label only
        return "accuracy"


def escalation(store: Any, run_id: str, aid: str, suite_cfg: dict[str, dict]) -> tuple[str, dict] | None:
    """``(attack, params)`` of the escalated evaluation ``aid`` of ``run_id``: as recorded, else
    (legacy) from :data:`natbench.checks.ESCALATIONS`, the restarts PGD taking the largest ``steps``
    written in the run's configured suite ``suite_cfg`` (id -> attack entry; 20 without a PGD);
    ``None`` for an id that is not an escalation."""
    recorded = get(store, run_id).get("escalations", {}).get(aid)
    if recorded:
        return str(recorded["attack"]), dict(recorded.get("params") or {})
    from .checks import ESCALATIONS

    known = {a: (name, params) for entries in ESCALATIONS.values() for a, name, params in entries}
    if aid not in known:
        return None
    name, params = known[aid]
    if name == "pgd":
        params = {**params, "steps": max([int((a.get("params") or {}).get("steps", 0)) for a in suite_cfg.values()
                                          if a.get("attack") == "pgd"] or [20])}
    return name, params
