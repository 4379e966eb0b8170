"""``natbench check``: load every registry entry and check it against its contract.

Also used by the tests, which are parametrized over the registry so a new plugin is tested
without a new test file.
"""
from __future__ import annotations

import dataclasses
import inspect

from .contracts import Attack, Defense, Regularizer, WeightAverager, WeightPerturbation
from .registry import Entry, Registry

PROTOCOLS = {"defenses": Defense, "regularizers": Regularizer, "perturbations": WeightPerturbation,
             "averagers": WeightAverager, "attacks": Attack}


def problems(entry: Entry, reg: Registry) -> list[str]:
    """Everything wrong with one entry (empty list: it honours its contract)."""
    try:
        if entry.kind in ("tasks", "suites"):
            return _spec_problems(entry, reg)
        obj = reg.load(entry.kind, entry.name)
    except Exception as e:  # noqa: BLE001 - reported, not swallowed: the entry fails the check
        return [f"cannot load: {type(e).__name__}: {e}"]
    out = []
    if not inspect.isclass(obj):
        return [f"{entry.target} is not a class"]
    module_doc = getattr(inspect.getmodule(obj), "__doc__", None)  # one plugin per file: either docstring cites
    if not (obj.__doc__ or module_doc or "").strip():
        out.append("no docstring (must cite its paper / equation)")
    if entry.kind == "task_kinds":
        for attr in ("capabilities", "headline_metric", "build_model", "loaders", "task_loss", "logits", "objective", "evaluate"):
            if not hasattr(obj, attr):
                out.append(f"task kind lacks '{attr}'")
        return out
    if getattr(obj, "name", None) != entry.name:
        out.append(f"class attribute name={getattr(obj, 'name', None)!r} differs from registry name {entry.name!r}")
    params = getattr(obj, "Params", None)
    if params is None or not dataclasses.is_dataclass(params):
        out.append("no Params dataclass")
    else:
        if not params.__dataclass_params__.frozen:
            out.append("Params is not frozen")
        for f in dataclasses.fields(params):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                out.append(f"Params.{f.name} has no default")
        try:
            instance = obj(params())
        except Exception as e:  # noqa: BLE001
            out.append(f"cannot build with default Params: {type(e).__name__}: {e}")
            instance = None
        proto = PROTOCOLS.get(entry.kind)
        if instance is not None and proto is not None and not isinstance(instance, proto):
            missing = [m for m in dir(proto) if not m.startswith("_") and not hasattr(instance, m)]
            out.append(f"does not implement {proto.__name__} (missing: {', '.join(missing)})")
    return out


def _spec_problems(entry: Entry, reg: Registry) -> list[str]:
    from .resolve import load_task, task_kind_cls
    from .taskspec import load_suite_spec

    if entry.kind == "suites":
        suite = load_suite_spec(entry.spec_path())
        return [f"attack '{a.attack}' of {a.id} is not registered" for a in suite.attacks if not reg.has("attacks", a.attack)]
    spec = load_task(reg, entry.name)
    out = []
    if spec.task != entry.name:
        out.append(f"spec says task: {spec.task}, registry name is {entry.name}")
    if entry.task_kind and spec.kind != entry.task_kind:
        out.append(f"spec kind {spec.kind} differs from registry kind {entry.task_kind}")
    task_kind_cls(reg, spec)
    if not reg.has("suites", spec.suite):
        out.append(f"suite '{spec.suite}' is not registered")
    return out
