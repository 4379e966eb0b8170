"""``natbench list KIND NAME``: one registry entry in detail -- the way to discover ``--set`` keys.

- a code plugin (defense, regularizer, perturbation, averager, attack, task kind): its ``Params``
  fields as ``--set`` keys with their defaults and the comment written beside each field;
- a task: what it is (kind, data, model, threat model, suite), its profiles side by side, and the
  ``training.*`` keys a profile accepts;
- a suite: its attacks in order, with their parameters and objective.

Returns plain ``(title, columns, rows)`` tables; the CLI renders them (rich), tests read them.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
from typing import Any

from .registry import SPEC_KINDS, Registry

Table = tuple[str, list[str], list[list[str]]]
_FIELD = re.compile(r"^\s*([A-Za-z_]\w*)\s*:")


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the ``# comment`` written on each field's line of dataclass ``cls``
    (the house style: every Params field has a default and a short comment)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    lines = src.splitlines()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                m = _FIELD.match(lines[tok.start[0] - 1])
                if m and m.group(1) not in out:
                    out[m.group(1)] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def params_table(cls: type, prefix: str, title: str) -> Table:
    """The ``Params`` dataclass of ``cls`` (or ``cls`` itself when it is a dataclass) as ``--set`` rows."""
    params = cls if dataclasses.is_dataclass(cls) else getattr(cls, "Params", None)
    if params is None or not dataclasses.is_dataclass(params):
        return (title, ["--set key", "default", "meaning"], [])
    comments = field_comments(params)
    defaults = params()
    rows = [[f"{prefix}.{f.name}", _fmt(getattr(defaults, f.name)), comments.get(f.name, "")]
            for f in dataclasses.fields(params)]
    return (title, ["--set key", "default", "meaning"], rows)


def describe(reg: Registry, kind: str, name: str) -> list[Table]:
    """The tables ``natbench list KIND NAME`` prints (an unknown name raises the did-you-mean error)."""
    e = reg.entry(kind, name)
    cls = None if kind in SPEC_KINDS else reg.load(kind, name)
    e = reg.entry(kind, name)  # a plugin's class attributes (cite, task kinds) are read when it loads
    rows = [["source", e.source], ["cite", e.cite], *([["target", e.target]] if e.target else []),
            *([["spec", str(e.spec_path())]] if e.spec else []), *([["alias", e.alias]] if e.alias else []),
            *([["task kinds", ", ".join(e.tasks)]] if e.tasks else [])]
    for attr in ("requires", "provides", "needs_cache", "capabilities", "norms", "objective_kind", "headline_metric"):
        v = getattr(cls, attr, None)
        if v not in (None, (), set(), frozenset()) and not callable(v):
            rows.append([attr, ", ".join(sorted(map(str, v))) if isinstance(v, (set, frozenset, tuple, list)) else str(v)])
    head: Table = (f"{kind} {name}", ["field", "value"], rows)
    if kind == "tasks":
        return [head, *_task_tables(reg, name)]
    if kind == "suites":
        return [head, _suite_table(reg, name)]
    if kind == "attacks":
        return [head, params_table(cls, "params", f"{name}: Params (a suite entry's `params:`)")]
    if kind == "task_kinds":
        return [head, params_table(cls, "task.params", f"{name}: Params (a task spec's `params:`)")]
    return [head, params_table(cls, name, f"{name}: Params (--set {name}.<field>=value)")]


def _task_tables(reg: Registry, name: str) -> list[Table]:
    from .taskspec import ProfileCfg, load_task_spec

    spec = load_task_spec(reg.entry("tasks", name).spec_path())
    t = spec.threat_model
    info: Table = ("task", ["field", "value"], [
        ["description", spec.description], ["kind", spec.kind], ["dataset", spec.data.dataset],
        ["model", spec.model.arch], ["threat model", f"{t.norm} eps={_fmt(t.eps)}"], ["suite", spec.suite],
        ["default profile", spec.default_profile]])
    fields = [f.name for f in dataclasses.fields(ProfileCfg)]
    names = list(spec.profiles)
    comments = field_comments(ProfileCfg)
    profiles: Table = (f"{name}: profiles (--profile NAME; --set training.<field>=value)",
                       ["--set key", *names, "meaning"],
                       [[f"training.{f}", *(_fmt(getattr(spec.profiles[p], f)) for p in names), comments.get(f, "")]
                        for f in fields])
    return [info, profiles]


def _suite_table(reg: Registry, name: str) -> Table:
    from .taskspec import load_suite_spec

    s = load_suite_spec(reg.entry("suites", name).spec_path())
    rows = [[a.id, a.attack, " ".join(f"{k}={_fmt(v)}" for k, v in a.params.items()), a.objective or "(the attack's)"]
            for a in s.attacks]
    return (f"{name}: attacks, in order after the clean pass", ["id", "attack", "params", "objective"], rows)
