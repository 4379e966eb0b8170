"""What the command line prints: rich's stdout console and tables (imported on first use, so that
``--help`` and argument errors answer without them) and the leaderboard in every format.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional


class _LazyConsole:
    """rich's stdout Console, created on first use (rich is imported only by commands that print tables)."""

    _console = None

    def __getattr__(self, name: str):
        if _LazyConsole._console is None:
            from rich.console import Console

            _LazyConsole._console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        return getattr(_LazyConsole._console, name)


out = _LazyConsole()


def Table(*args, **kwargs):  # noqa: N802 - rich.table.Table, imported when a table is printed
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


def leaderboard(task: Optional[str], fmt: str, write: bool, root: Path, db: Optional[str], out_dir: Optional[Path],
                columns: str, reference: Optional[Path], threat_model: Optional[str] = None,
                baseline: Optional[str] = None) -> None:
    """``natbench leaderboard``: the tables of ``task`` (or every task) from the store of ``root``/``db``,
    one per threat model (or only ``threat_model``, ``NORM:EPS``)."""
    from . import leaderboard as lb
    from .errors import ConfigError
    from .store import Store, store_exists, store_url

    if fmt not in ("table", *lb.FORMATS):
        raise ConfigError(f"--format {fmt!r}: expected one of table, {', '.join(lb.FORMATS)}")
    if columns not in ("auto", "headline", "all"):
        raise ConfigError(f"--columns {columns!r}: expected auto, headline or all")
    from .threats import parse

    threat = parse(threat_model) if threat_model is not None else None
    if not store_exists(root, db):
        from .errors import RunError

        raise RunError(f"no results store at {store_url(root, db)}; run something first, "
                       f"e.g. natbench run --task digits --defense vanilla")
    store = Store(store_url(root, db), readonly=True)  # a reading command never writes the store
    tasks = [task] if task else lb.tasks(store)
    if baseline is not None and store.get_run(baseline) is None:
        raise ConfigError(f"--baseline {baseline}: no complete run of that id in {store.path}; give the id of a finished run (a directory under --root)")
    if write:  # task names become file names under --out
        from .safety import check_name

        for t in tasks:
            check_name("--task", t)
    if write:
        for t in tasks:
            for p in lb.write(store, out_dir or root / "leaderboards", t,
                              lb.WRITE_FORMATS_HTML if fmt == "html" else lb._WRITE_FORMATS, threat_model=threat):
                print(f"wrote {p}", file=sys.stderr)
            from .leaderboard_corruptions import write as write_corruptions

            for p in write_corruptions(store, out_dir or root / "leaderboards", t, baseline):  # <task>-corruptions.*
                print(f"wrote {p}", file=sys.stderr)
            from .leaderboard_minnorm import write as write_minnorm

            for p in write_minnorm(store, out_dir or root / "leaderboards", t):  # <task>-minnorm.*
                print(f"wrote {p}", file=sys.stderr)
    if fmt in ("csv", "json") and len(tasks) > 1:
        import pandas as pd

        from .reference import apply as with_reference

        frames = [with_reference(df, store, t, reference).assign(task=t) for t in tasks
                  for df in lb.tables(store, t, threat_model=threat)]
        df = pd.concat(frames, ignore_index=True)
        df = df[["task", *[c for c in df.columns if c != "task"]]]
        sys.stdout.write(lb.render(df, fmt))
        return
    for t in tasks:
        print_leaderboard(store, t, fmt, columns, reference, threat_model=threat)
        if fmt != "html" and threat is None:  # the corruptions table (natbench.leaderboard_corruptions), when the task has such results
            from .leaderboard_corruptions import print_tables

            print_tables(store, t, fmt, baseline)
            from .leaderboard_minnorm import print_tables as print_minnorm

            print_minnorm(store, t, fmt)  # accuracy at several eps from a minimum-norm attack (fmn, cw-l2)


def print_leaderboard(store, task: str, fmt: str, columns: str = "auto", reference: Optional[Path] = None,
                      threat_model: Optional[tuple] = None) -> None:
    """One task's leaderboard, one table per threat model (or only ``threat_model`` ``(norm, eps)``):
    ``fmt`` "table" (rich; the headline view when too wide for the terminal and ``columns`` is
    "auto"), or md/csv/json/html text on stdout (csv/json: one frame, the ``norm``/``eps`` columns
    naming each row's threat model; md: a titled table per threat model; html: the page)."""
    from . import leaderboard as lb
    from .reference import apply as with_reference

    # published reference numbers go into the table of their threat model (natbench.reference)
    frames = [with_reference(df, store, task, reference) for df in lb.tables(store, task, threat_model=threat_model)]
    if fmt != "table":
        if fmt == "html":  # the page --write writes
            text = lb.html_page(store, task, frames)
        elif fmt == "md" and len(frames) > 1:
            text = "\n".join(f"## {task} — {df.attrs['threat_title']}\n\n{lb.render(df, fmt)}" for df in frames)
        else:
            text = lb.render(frames[0] if len(frames) == 1 else lb.concat(frames), fmt)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    for df in frames:
        _print_table(df, task, columns)


def _print_table(df, task: str, columns: str) -> None:
    """One threat model's table on the terminal (rich)."""
    from . import leaderboard as lb

    metrics = df.attrs.get("metric", "accuracy").split("/")
    key_cols = [c for c in ("defense", "source", "profile", "variant", "trained", "checkpoint", "seeds", "reference")
                if c in df.columns]
    flagged = "flags" in df.columns and bool((df["flags"] != "").any())
    recs = df.to_dict("records")

    def grouped(cols: list[str]) -> dict[str, list[str]]:
        # several metrics (re-id's mAP and rank-1): one "mAP/rank1" cell per attack, as the papers print them
        groups: dict[str, list[str]] = {}
        for c in cols:
            base = next((c.replace(f" {m}", "", 1) for m in metrics if len(metrics) > 1 and f" {m}" in c), c)
            groups.setdefault(base, []).append(c)
        return groups

    def width(groups: dict[str, list[str]]) -> int:
        cells = [[str(r[c]) for r in recs] + [c] for c in key_cols + (["flags"] if flagged else [])]
        cells += [["/".join(lb.cell(r, c) for c in cols) for r in recs] + [base] for base, cols in groups.items()]
        return sum(max(map(len, col)) + 3 for col in cells) + 1

    groups = grouped(lb.value_columns(df))
    headline = columns == "headline" or (columns == "auto" and width(groups) > out.width)
    if headline:
        groups = grouped(lb.headline_columns(df))
    what = ("headline view: clean, headline attack, worst case; --columns all for every column" if headline
            else "± = 95 % interval; avg over " + (", ".join(df.attrs.get("avg_attacks", [])) or "no attack"))
    table = Table(title=f"{task} — {df.attrs.get('threat_title', '?')} — {'/'.join(metrics)} (%) on the test set, sorted by {df.attrs.get('sort_by') or 'defense'}"
                  f"{lb.suites_text(df, ', suite{s} {names}')} ({what})",
                  title_justify="left")
    for c in key_cols:  # names are never cut: pgd-at, pgd-at+nat and pgd-at+myreg must stay apart
        table.add_column(c, justify="left", no_wrap=True, min_width=max(len(c), *(len(str(r[c])) for r in recs)))
    for base in groups:
        table.add_column(base, justify="right", min_width=len(base))
    if flagged:
        table.add_column("flags", justify="left")
    for r in recs:
        cells = [str(r[c]) for c in key_cols] + ["/".join(lb.cell(r, c) for c in cols) for cols in groups.values()]
        if flagged:
            cells.append(f"[yellow]{r['flags']}[/yellow]" if r["flags"] else "")
        table.add_row(*cells)
    out.print(table)
