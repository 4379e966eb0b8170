"""``natbench list`` and ``natbench check``: the registry as tables, and the names a command line
gives, checked before torch is imported (so that a typo answers at once)."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

from .cli_output import Table, out
from .errors import NatbenchError

LIST_KINDS = ("tasks", "defenses", "regularizers", "perturbations", "averagers", "attacks", "suites", "task_kinds")


def check_names(reg, task: str, defenses: List[str], suite: Optional[str]) -> None:
    """Task, suite and defense-component names, checked before torch is imported so that a typo
    answers at once (resolve() checks everything again, with the same messages)."""
    from .errors import CompositionError, suggest

    def is_path(x: str) -> bool:
        return x.endswith((".yaml", ".yml")) or os.sep in x

    if not is_path(task):
        reg.entry("tasks", task)
    if suite and not is_path(suite):
        reg.entry("suites", suite)
    kinds = ("defenses", "regularizers", "perturbations", "averagers")  # natbench.compose.COMPONENT_KINDS
    names = sorted(n for k in kinds for n in reg.names(k))
    for spec in defenses:
        for n in (x.strip() for x in spec.split("+")):
            if n and not any(reg.has(k, n) for k in kinds):
                raise CompositionError(f"Unknown defense '{n}'.{suggest(n, names)} Available: {', '.join(names)}")


def list_entries(kind: Optional[str], name: Optional[str]) -> None:
    """``natbench list [KIND [NAME]]``: every kind's entries as tables, or one entry in detail."""
    from .errors import unknown
    from .registry import get_registry

    reg = get_registry()
    if kind is not None and kind not in LIST_KINDS:
        raise unknown("list kind", kind, LIST_KINDS)
    if name is not None:
        from rich.markup import escape

        from .describe import describe

        for title, cols, rows in describe(reg, kind, name):
            table = Table(title=title, title_justify="left")
            for c in cols:
                table.add_column(c, overflow="fold")
            for row in rows:
                table.add_row(*map(escape, row))
            out.print(table)
        return
    for k in [kind] if kind else LIST_KINDS:
        table = Table(title=k, title_justify="left")
        for col in ("name", "target / spec", "alias", "task kinds", "cite"):
            table.add_column(col, overflow="fold")
        for e in reg.entries(k):
            if e.source != "builtin" and e.target:  # a plugin's cite and task kinds are class attributes
                try:
                    reg.load(k, e.name)
                    e = reg.entry(k, e.name)
                except NatbenchError as err:
                    e = dataclasses.replace(e, cite=f"[red]{err}[/red]")
            table.add_row(e.name, e.target or e.spec or "", e.alias or "", ", ".join(e.tasks or ()), e.cite)
        out.print(table)


def check_contracts() -> int:
    """``natbench check``: every registry entry imported and checked against its contract; the
    table is printed, and the number of entries that failed returned."""
    from .contract_check import problems
    from .registry import get_registry

    reg = get_registry()
    table = Table("kind", "name", "status", title="registry contract check", title_justify="left")
    failed = 0
    for kind in reg.kinds():
        for e in reg.entries(kind):
            p = problems(e, reg)
            failed += bool(p)
            table.add_row(kind, e.name, "[green]ok[/green]" if not p else "[red]" + "; ".join(p) + "[/red]")
    out.print(table)
    if failed:
        out.print(f"[red]{failed} entr{'y' if failed == 1 else 'ies'} failed the contract check[/red]")
    return failed
