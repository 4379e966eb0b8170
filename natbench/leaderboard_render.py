"""A leaderboard frame as text: :func:`render` (md / csv / json / a bare html table), the md line under
the title (:func:`md_preamble`), the value and headline columns of a frame and a cell's ``mean ± h``
text, and :func:`write`, which writes ``<out_dir>/<task>.<fmt>`` atomically with the user's umask.
Re-exported by :mod:`natbench.leaderboard`, where callers have always found them."""
from __future__ import annotations

import html
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from natbench.errors import ConfigError, RunError

from .leaderboard_rows import ESCALATED_PREFIX, KEY_COLS, META_COLS, SUFFIXES, eps_text

log = logging.getLogger("natbench.leaderboard")

FORMATS = ("md", "csv", "json", "html")
#: what :func:`write` (and ``natbench leaderboard --write``) writes by default; ``--format html --write``
#: adds ``html`` (:data:`WRITE_FORMATS_HTML`)
_WRITE_FORMATS = ("md", "csv", "json")
WRITE_FORMATS_HTML = (*_WRITE_FORMATS, "html")


def render(df: pd.DataFrame, fmt: str) -> str:
    """Render a :func:`table` frame as ``md``, ``csv``, ``json`` or ``html`` text.

    md is a GitHub pipe table with ``mean ± h`` cells, ``h`` the larger half of the cell's 95 %
    interval (``_lo``/``_hi``; docs/leaderboard.md), and without the provenance columns; csv is
    ``df.to_csv(index=False)`` (interval bounds, std and provenance as their own columns); json a list
    of records (NaN -> null); html a small standalone table (the full page is :func:`html_page`).
    Missing values are left empty.
    """
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = [{k: _jsonable(v) for k, v in rec.items()} for rec in df.to_dict("records")]
        return json.dumps(records, indent=2) + "\n"
    if fmt == "md":
        return pipe_table(*_cells(df))
    if fmt == "html":
        header, rows, numeric = _cells(df)
        title = "natbench leaderboard"
        if df.attrs.get("task"):
            title += f": {df.attrs['task']} ({df.attrs.get('metric', 'accuracy')}, %)"
        th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "\n".join(
            "<tr>" + "".join(f'<td class="{"num" if n else "txt"}">{html.escape(c)}</td>'
                             for c, n in zip(r, numeric)) + "</tr>" for r in rows)
        return (
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>\n<style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:2px 8px}td.num{text-align:right}"
            f"</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
            "</body></html>\n"
        )
    raise ConfigError(f"Unknown leaderboard format '{fmt}'. Available: {', '.join(FORMATS)}")


def pipe_table(header: list[str], rows: list[list[str]], numeric: list[bool] | None = None) -> str:
    """A GitHub pipe table of text cells (``|`` escaped); columns aligned right where ``numeric``, no
    alignment when it is None."""
    line = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    rule = "|" + "|".join("---" if numeric is None else ("---:" if n else ":---") for n in (numeric or header)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)]) + "\n"


def md_preamble(df: pd.DataFrame) -> str:
    """One line under the md title: the threat model, test points, recipe and what ``±``/``avg`` mean."""
    def common(col: str) -> str:
        vals = [v for v in dict.fromkeys(df[col].tolist()) if not pd.isna(v) and v != ""] if col in df.columns else []
        return ", ".join(eps_text(v) if col == "eps" and isinstance(v, float) else f"{v:g}" if isinstance(v, float) else str(v)
                         for v in vals) or "?"
    avg = ", ".join(df.attrs.get("avg_attacks", [])) or "none"
    return (f"Threat model {common('norm')} eps {common('eps')}; test points {common('n_test')}; "
            f"epochs {common('epochs')}. `±`: 95 % interval (docs/leaderboard.md). `avg`: mean over {avg}. "
            f"Sorted by {df.attrs.get('sort_by') or 'defense'}, descending." + suites_text(df, " Suite{s} {names}."))


def suites_text(df: pd.DataFrame, template: str) -> str:
    """``template`` filled with the suite name(s) the table's rows were evaluated with ("" if unknown)."""
    names = df.attrs.get("suites") or []
    return template.format(s="s" if len(names) > 1 else "", names=", ".join(names)) if names else ""


def write(store, out_dir: Path, task: str | None = None, formats: tuple[str, ...] = _WRITE_FORMATS,
          threat_model: tuple | None = None) -> list[Path]:
    """Write ``<out_dir>/<task>.<fmt>`` for every task (or just ``task``) and every format of
    ``formats`` (default md, csv, json; ``"html"`` adds the page of :func:`html_page`); return the paths.

    Several threat models (:func:`natbench.leaderboard.tables`; ``threat_model``: only that one): the
    md file has one titled table per threat model, the csv/json one row set whose ``norm``/``eps``
    columns name each row's threat model, the html page one section per threat model.

    Each file is written atomically (temporary file in ``out_dir`` + ``os.replace``), with the
    permissions the user's umask gives a new file.
    """
    unknown_fmt = [f for f in formats if f not in FORMATS]
    if unknown_fmt:
        raise ConfigError(f"Unknown leaderboard format '{unknown_fmt[0]}'. Available: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    from .leaderboard import concat, html_page, tables, tasks

    names = [task] if task is not None else tasks(store)
    if not names:
        raise RunError(f"No results in {store.path}. Run: natbench run --task digits --defense vanilla")
    pages = []  # everything rendered before the first file is written: nothing half-written on an error
    for name in names:
        frames = tables(store, name, threat_model=threat_model)
        df = frames[0] if len(frames) == 1 else concat(frames)
        for fmt in formats:
            text = html_page(store, name, frames) if fmt == "html" else render(df, fmt)
            if fmt == "md":
                text = (f"# {name} ({df.attrs['metric']}, %)\n\n"
                        "<!-- Generated by `natbench leaderboard --write`; do not edit by hand. -->")
                for f in frames:
                    text += (f"\n\n## {name} — {f.attrs['threat_title']}" if len(frames) > 1 else "")
                    text += f"\n\n{md_preamble(f)}\n\n{render(f, fmt)}"
            pages.append((out_dir / f"{name}.{fmt}", text))
    paths: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, text in pages:
            atomic_write_text(path, text)
            paths.append(path)
    except OSError as e:
        raise RunError(f"cannot write the leaderboard to {out_dir}: {e.strerror or e}; "
                       f"choose a writable folder with --out DIR") from None
    log.info("wrote %d leaderboard files to %s", len(paths), out_dir)
    return paths


def value_columns(df: pd.DataFrame) -> list[str]:
    """The value columns of a table frame (attacks, avg, worst-case): not key, provenance or companions."""
    fixed = (*KEY_COLS, "seeds", "flags", *META_COLS, "source", "reference")
    return [c for c in df.columns if c not in fixed and not (str(c).endswith(SUFFIXES) and str(c)[:-3] in df.columns)
            and not (str(c).endswith("_std") and str(c)[:-4] in df.columns)]


def headline_columns(df: pd.DataFrame) -> list[str]:
    """The value columns of the headline view: clean, the headline attack (AutoAttack where run, else
    the attack with the lowest mean over the rows: the strongest of the table) and the worst case,
    every metric of each (re-id: mAP and rank-1)."""
    metrics = str(df.attrs.get("metric", "accuracy")).split("/")
    values = value_columns(df)

    def base(c: str) -> str:
        return next((c[: -len(m) - 1] for m in metrics if len(metrics) > 1 and c.endswith(f" {m}")), c)

    attacks = [c for c in values if base(c) not in ("clean", "avg") and not c.startswith(("worst-case", ESCALATED_PREFIX))]
    head = df.attrs.get("sort_by") if df.attrs.get("sort_by") in attacks else None
    if head is None and attacks:
        primary = [c for c in attacks if len(metrics) == 1 or c.endswith(f" {metrics[0]}")] or attacks
        means = {c: df[c].mean() for c in primary if df[c].notna().any()}
        head = min(means, key=means.get) if means else None
    keep = {"clean"} | ({base(head)} if head else set())
    return [c for c in values if base(c) in keep or c.startswith("worst-case")]


def cell(rec: dict, col: str) -> str:
    """``"85.00 ± 7.07"``: the value and the larger half of its 95 % interval (just the value without one)."""
    v = rec.get(col)
    text = _fmt(v)
    lo, hi = rec.get(f"{col}_lo"), rec.get(f"{col}_hi")
    if text and isinstance(v, (float, int, np.floating)) and lo is not None and hi is not None and not _isnan(lo) and not _isnan(hi):
        text += f" ± {max(float(v) - float(lo), float(hi) - float(v)):.2f}"
    return text


def _cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, formatted rows and numeric-column flags of the displayed columns (no companions, no
    provenance); a value with ``_lo``/``_hi`` becomes ``mean ± h`` (:func:`cell`)."""
    values = set(value_columns(df))
    cols = [c for c in df.columns if c in values or c in (*KEY_COLS, "seeds", "flags", "source", "reference")]
    rows = [[cell(rec, c) if c in values else _fmt(rec[c]) for c in cols] for rec in df.to_dict("records")]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in cols]
    return [str(c) for c in cols], rows, numeric


def _fmt(v) -> str:
    if v is None or v is pd.NA or _isnan(v):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.2f}"
    return str(v)


def _isnan(v) -> bool:
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def _jsonable(v):
    if _isnan(v) or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_files(texts: dict) -> list[Path]:
    """Each ``path -> text`` with :func:`atomic_write_text`, in order (render every text first: an
    error then leaves nothing half-written); the paths written."""
    for path, text in texts.items():
        atomic_write_text(Path(path), text)
    return [Path(p) for p in texts]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``; the
    file gets the mode a plain ``open(path, "w")`` would (0666 less the umask), not mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
