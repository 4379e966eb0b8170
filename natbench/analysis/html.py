"""Self-contained HTML pieces for reports and leaderboards: inline CSS, a few lines of inline JS (table
sorting), images embedded as base64 PNG ``data:`` URIs. Nothing refers to a file or a network
address, so a page opens offline and can be mailed as one file."""
from __future__ import annotations

import base64
import html as _html
from pathlib import Path
from typing import Iterable, Sequence

CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1500px;padding:0 1em;color:#222}"
    "h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}"
    "th,td{border:1px solid #ccc;padding:2px 8px}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "th{background:#f3f3f3}table.sortable th{cursor:pointer}table.sortable th:hover{background:#e4e4e4}"
    "th[data-dir=asc]:after{content:' \\25B2'}th[data-dir=desc]:after{content:' \\25BC'}"
    "tr.fail td{background:#fde8e8}.fail{color:#b00}.pass{color:#070}"
    "figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #ddd}"
    "figcaption{font-size:.85em;color:#444;max-width:1100px}.note{color:#555;font-style:italic}"
    "pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}"
)

#: click a header to sort by that column (numbers by value, empty cells last); click again to reverse
SORT_JS = (
    "document.querySelectorAll('table.sortable').forEach(function(t){"
    "t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){"
    "var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.getAttribute('data-dir')!=='asc';"
    "t.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir');});"
    "th.setAttribute('data-dir',asc?'asc':'desc');"
    "rows.sort(function(r1,r2){var x=r1.cells[i].textContent.trim(),y=r2.cells[i].textContent.trim();"
    "if(x===''||y===''){return x===y?0:(x===''?1:-1);}"
    "var nx=parseFloat(x),ny=parseFloat(y),c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);"
    "return asc?c:-c;});rows.forEach(function(r){b.appendChild(r);});});});});"
)


def esc(text) -> str:
    """HTML-escaped text; a ``scheme://`` in it is written ``scheme:&#47;&#47;`` so the page source
    holds no network address at all (it still reads the same)."""
    return _html.escape(str(text)).replace("://", ":&#47;&#47;")


def img(png: Path | bytes, alt: str, caption: str = "") -> str:
    """A ``<figure>`` with the PNG embedded as a base64 data URI."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    b64 = base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{b64}">{cap}</figure>'


def table(header: Sequence[str], rows: Iterable[Sequence], *, numeric: Sequence[bool] | None = None,
          sortable: bool = False, row_classes: Sequence[str] | None = None) -> str:
    """A ``<table>`` of text cells (escaped); ``numeric`` columns are right-aligned."""
    rows = [list(r) for r in rows]
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    th = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        tds = "".join(f'<td class="{"num" if n else "txt"}">{esc(c)}</td>' for c, n in zip(r, numeric))
        body.append(f"<tr{cls}>{tds}</tr>")
    attr = ' class="sortable"' if sortable else ""
    return f"<table{attr}>\n<thead><tr>{th}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def page(title: str, body: str, *, script: bool = False) -> str:
    """A complete standalone page (inline CSS; the sorting script when ``script``)."""
    js = f"\n<script>{SORT_JS}</script>" if script else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f"<style>{CSS}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n{body}{js}\n</body></html>\n")
