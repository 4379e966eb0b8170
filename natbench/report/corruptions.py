"""The report's common-corruptions section: a corruption x severity heat map of the headline metric
per run (side by side, one colour scale), the mean over the entries run and the per-corruption means,
when the store holds corruption results (``natbench eval RUN --suite corruptions``; docs/corruptions.md).

A cell of an entry that was not run (or could not be computed) is blank and grey, never 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..analysis import html as H


def heatmap(grids: dict[str, Any], path: Path, metric: str) -> Path:
    """One 15 x 5 heat map per run (``label -> array``, NaN = not run), the metric in percent written
    in each cell; one shared 0-100 colour scale."""
    import numpy as np

    from ..analysis.plots import _plt, _save
    from ..corruptions import CORRUPTIONS, SEVERITIES

    plt = _plt()
    n = len(grids)
    width = 3.6 * n + 2.6
    fig, axes = plt.subplots(1, n, figsize=(width, 6.2), squeeze=False)
    fig.subplots_adjust(left=1.9 / width, right=1 - 0.9 / width, top=0.88, bottom=0.09, wspace=0.15)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")  # not run: grey
    im = None
    for k, (ax, (label, a)) in enumerate(zip(axes[0], grids.items())):
        a = np.asarray(a, dtype=float)
        im = ax.imshow(np.ma.masked_invalid(a), cmap=cmap, vmin=0, vmax=100, aspect="auto")
        mean = float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
        ax.set_title(f"{label}\nmean {mean:.1f}%", fontsize=9)
        ax.set_xticks(range(len(SEVERITIES)), [str(s) for s in SEVERITIES], fontsize=7)
        ax.set_yticks(range(len(CORRUPTIONS)), list(CORRUPTIONS) if k == 0 else [""] * len(CORRUPTIONS), fontsize=7)
        ax.set_xlabel("severity", fontsize=8)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                if np.isfinite(a[i, j]):
                    ax.text(j, i, f"{a[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if a[i, j] < 50 else "black")
    fig.colorbar(im, cax=fig.add_axes([1 - 0.7 / width, 0.15, 0.12 / width, 0.62]), label=f"{metric} (%)")
    fig.suptitle(f"Common corruptions: {metric} per corruption and severity", fontsize=10)
    return _save(fig, path)


def grid(res: Any, metric: str) -> Any:
    """The 15 x 5 array (percent, NaN = not run) of one run's checkpoint's result rows."""
    import numpy as np

    from ..corruption_suite import values_of
    from ..corruptions import CORRUPTIONS, SEVERITIES

    a = np.full((len(CORRUPTIONS), len(SEVERITIES)), np.nan)
    for (c, s), v in values_of(res, metric).items():
        a[CORRUPTIONS.index(c), SEVERITIES.index(s)] = 100 * v
    return a


def corruptions_section(runs: list, store: Any, out_dir: Path, checkpoint: str) -> str:
    """The section's HTML ("" when no run has corruption results at ``checkpoint``)."""
    from ..corruption_suite import summary, values_of
    from ..corruptions import CORRUPTIONS
    from .runs import headline_metric, slug

    res = store.results()
    metric = headline_metric(runs[0], store)
    grids, rows = {}, []
    for r in runs:
        mine = res[(res["run_id"] == r.run_id) & (res["checkpoint"] == checkpoint)]
        vals = values_of(mine, metric)
        if not vals:
            continue
        grids[r.label] = grid(mine, metric)
        s = summary(vals, metric, None, no_baseline="see the leaderboard's corruptions table")
        rows.append([r.label, str(len(vals)), f"{100 * s.mean:.2f}",
                     *[f"{100 * s.per_corruption[c]:.1f}" if c in s.per_corruption else "" for c in CORRUPTIONS]])
    if not grids:
        return ""
    png = heatmap(grids, out_dir / f"corruptions_{slug(runs[0].run_id)}.png", metric)
    cap = (f"{metric} (%) of the {checkpoint} checkpoint under each of the 15 ImageNet-C corruptions (rows) at each "
           f"severity (columns); grey: not run. Corruptions are not in an eps-ball and are not part of the "
           f"adversarial worst case. mCE relative to a baseline run: natbench leaderboard (corruptions table).")
    return ("<h2>Common corruptions</h2>" + H.img(png, "corruption x severity heat map", cap)
            + H.table(["run", "entries", "mean %", *CORRUPTIONS], rows, numeric=[False] + [True] * (2 + len(CORRUPTIONS))))
