"""Plots people would rather see than read. Matplotlib with the Agg backend (no display needed)."""
from __future__ import annotations

from pathlib import Path


def training_curves(history: list[dict], path: Path, title: str = "", metric: str = "accuracy") -> Path:
    """Training loss and the validation ``metric`` (clean, robust) per epoch, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o", ms=3)
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in (("val_clean", "clean"), ("val_robust", "robust (PGD)" if metric == "accuracy" else "robust (PGD on the embedding)")):
        pts = [(h["epoch"] + 1, 100 * h[key]) for h in history if key in h]  # a guard-stopped epoch has none
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    stops = [h["epoch"] + 1 for h in history if h.get("stop", 0) > 0]
    for e in stops:
        ax2.axvline(e, color="red", ls="--", lw=1, label="early stop (epoch discarded)")
    ax2.set(xlabel="epoch", ylabel=f"validation {metric} (%)", title="validation", ylim=(0, 100))
    ax2.legend(loc="lower right")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------------
# Analysis plots (issue 7). Every function writes one PNG atomically (Agg backend, no display, no
# network) and returns its path. ``runs`` arguments are ``{label: data}`` dicts in display order.
# ------------------------------------------------------------------------------------------------

_LINESTYLES = ("-", "--", ":", "-.")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    _plt().close(fig)
    tmp.replace(path)
    return path


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def training_report(history: list[dict], path: Path, title: str = "", metric: str = "accuracy",
                    select_on: str = "robust") -> Path:
    """Loss parts per epoch (left) and clean / robust validation ``metric`` per epoch (right) with
    the ``best`` epoch (highest validation robust metric, or clean when ``select_on`` is "clean";
    the earliest on ties, as the runner selects) and the ``last`` epoch marked, so robust
    overfitting (best far above last) is visible."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    skip = {"epoch", "lr", "seconds", "stop", "val_clean", "val_robust"}
    keys = [k for k in dict.fromkeys(k for h in history for k in h) if k not in skip
            and all(isinstance(h.get(k, 0.0), (int, float)) for h in history)]
    for k in keys:
        pts = [(h["epoch"] + 1, h[k]) for h in history if k in h]
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=2.2 if k == "loss" else 1.2,
                 label="total loss" if k == "loss" else k)
    ax1.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="loss and its parts")
    ax1.legend(fontsize=7, loc="upper right")
    val = [h for h in history if "val_clean" in h]
    summary = ""
    if val:
        ep = [h["epoch"] + 1 for h in val]
        clean = [100 * h["val_clean"] for h in val]
        robust = [100 * h["val_robust"] for h in val]
        ax2.plot(ep, clean, marker="o", ms=3, label="clean")
        ax2.plot(ep, robust, marker="o", ms=3, label="robust (PGD)")
        sel = clean if select_on == "clean" else robust
        ib = max(range(len(sel)), key=lambda i: (sel[i], -i))  # earliest maximum
        il = len(val) - 1
        ax2.axvline(ep[ib], color="green", ls="--", lw=1,
                    label=f"best: epoch {ep[ib]} (clean {clean[ib]:.1f}, robust {robust[ib]:.1f})")
        ax2.axvline(ep[il], color="grey", ls=":", lw=1.5,
                    label=f"last: epoch {ep[il]} (clean {clean[il]:.1f}, robust {robust[il]:.1f})")
        ax2.plot([ep[ib]], [robust[ib]], "*", color="green", ms=12)
        ax2.plot([ep[il]], [robust[il]], "*", color="grey", ms=12)
        summary = (f"best-last robust gap {robust[ib] - robust[il]:+.1f} pts "
                   f"(selected on {'clean' if select_on == 'clean' else 'robust'} val.)")
    ax2.set(xlabel="epoch", ylabel=f"validation {metric} (%)", title="validation: " + summary, ylim=(0, 100))
    ax2.title.set_fontsize(9)
    ax2.legend(loc="lower right", fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def sparsity_plot(runs: dict, path: Path, attack: str = "PGD") -> Path:
    """NAT Fig. 3: mean sorted output probability per rank (log scale; clean solid, under ``attack``
    dashed; one colour per run) and the mean entropy, non-target entropy and Hoyer sparsity.

    ``runs``: ``{label: {"clean": profile, "adv": profile or None}}`` with
    :func:`natbench.analysis.sparsity.profile` dicts."""
    plt = _plt()
    import numpy as np

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1.6, 1, 1, 1]})
    cols = _colors(len(runs))
    for (label, d), c in zip(runs.items(), cols):
        for key, ls in (("clean", "-"), ("adv", "--")):
            prof = d.get(key)
            if prof is None:
                continue
            curve = np.clip(np.asarray(prof["sorted_mean"]), 1e-12, None)
            axes[0].plot(np.arange(1, len(curve) + 1), curve, ls, marker="o", ms=3, color=c,
                         label=f"{label} ({'clean' if key == 'clean' else attack})")
    axes[0].set_yscale("log")
    axes[0].set(xlabel="rank of the class probability", ylabel="mean probability (log)",
                title="sorted output probabilities")
    axes[0].legend(fontsize=7)
    names = list(runs)
    width = 0.8 / max(1, 2 * len(names))
    for ax, (key, ttl) in zip(axes[1:], (("entropy_mean", "entropy (nats)"), ("nontarget_entropy_mean", "non-target entropy"),
                                         ("hoyer_mean", "Hoyer sparsity (1 = one-hot)"))):
        for i, (label, c) in enumerate(zip(names, cols)):
            for k, (which, hatch) in enumerate((("clean", ""), ("adv", "//"))):
                prof = runs[label].get(which)
                if prof is None:
                    continue
                x = (2 * i + k) * width
                v = prof[key]
                ax.bar(x, v, width=width * 0.95, color=c, hatch=hatch, edgecolor="black", lw=0.5)
                ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks([(2 * i + 0.5) * width for i in range(len(names))])
        ax.set_xticklabels(names, fontsize=7, rotation=15)
        ax.set_title(ttl + "\n(plain: clean, hatched: " + attack + ")", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].grid(alpha=0.3)
    fig.suptitle("Output-probability sparsity (NAT Fig. 3), test set")
    fig.tight_layout()
    return _save(fig, path)


def matrix_plot(mats: dict, path: Path, title: str, cbar: str, *, diverging: bool = False,
                row_label: str = "class i", col_label: str = "class j", annotate: bool | None = None) -> Path:
    """One heatmap per run (side by side, one shared colour scale), the off-diagonal mean in each
    panel title; values written in the cells for up to 12 classes."""
    plt = _plt()
    import numpy as np

    arrays = {k: np.asarray(v, dtype=float) for k, v in mats.items()}
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays.values()] or [np.zeros(1)])
    if diverging:
        m = float(np.abs(finite).max()) if finite.size else 1.0
        vmin, vmax, cmap = -m, m, "RdBu_r"
    else:
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        cmap = "viridis"
    n = len(arrays)
    width = 4.4 * n + 1.4  # no constrained layout (slow): margins in inches
    fig, axes = plt.subplots(1, n, figsize=(width, 4.4), squeeze=False)
    fig.subplots_adjust(left=0.7 / width, right=1 - 1.3 / width, top=0.82, bottom=0.1, wspace=0.3)
    im = None
    for ax, (label, a) in zip(axes[0], arrays.items()):
        im = ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax)
        off = a.copy()
        if off.shape[0] == off.shape[1]:
            np.fill_diagonal(off, np.nan)
        mean = float(np.nanmean(off)) if np.isfinite(off).any() else float("nan")
        ax.set_title(f"{label}\noff-diagonal mean {mean:.3g}", fontsize=9)
        ax.set(xlabel=col_label, ylabel=row_label)
        c = a.shape[0]
        if annotate if annotate is not None else max(a.shape) <= 12:
            for i in range(a.shape[0]):
                for j in range(a.shape[1]):
                    if np.isfinite(a[i, j]):
                        dark = abs(a[i, j]) > 0.6 * vmax if diverging else a[i, j] < (vmin + vmax) / 2
                        ax.text(j, i, f"{a[i, j]:.2g}", ha="center", va="center", fontsize=6,
                                color="white" if dark else "black")
        if c <= 20:
            ax.set_xticks(range(a.shape[1]))
            ax.set_yticks(range(a.shape[0]))
            ax.tick_params(labelsize=7)
    fig.colorbar(im, cax=fig.add_axes([1 - 1.0 / width, 0.15, 0.12 / width, 0.62]), label=cbar)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def signed_distance_plot(mats: dict, path: Path, *, row: int = 0, kind: str = "paper") -> Path:
    """NAT Fig. 6: the mean signed distance of the samples of class ``row`` to every class boundary,
    one bar group per boundary and one bar per run (the full class x boundary matrices are drawn by
    :func:`matrix_plot`)."""
    plt = _plt()
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 3.6))
    cols = _colors(len(mats))
    n = len(mats)
    width = 0.8 / max(n, 1)
    for i, ((label, m), c) in enumerate(zip(mats.items(), cols)):
        v = np.asarray(m, dtype=float)[row]
        x = np.arange(len(v)) + (i - (n - 1) / 2) * width
        ax.bar(x, np.nan_to_num(v), width=width * 0.95, color=c, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(np.asarray(next(iter(mats.values()))).shape[1]))
    what = "(w_j.h + b_j)/||w_j||" if kind == "paper" else "((w_y - w_j).h + b_y - b_j)/||w_y - w_j||"
    ax.set(xlabel="boundary j", ylabel="mean signed distance",
           title=f"Signed distance of the class-{row} test samples to each class boundary {what} (NAT Fig. 6)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def embedding_plot(runs: dict, path: Path, method: str) -> Path:
    """NAT Fig. 5: one scatter per run of the 2-D embedding (``method`` names UMAP or t-SNE),
    coloured by class. ``runs``: ``{label: (Y (N, 2), y (N,), stats dict)}``."""
    plt = _plt()
    import numpy as np

    n = len(runs)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.6), squeeze=False)
    for ax, (label, (emb, y, stats)) in zip(axes[0], runs.items()):
        y = np.asarray(y)
        classes = np.unique(y)
        cols = _colors(len(classes))
        for c, col in zip(classes, cols):
            sel = y == c
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, color=col, label=str(c))
        sub = ", ".join(f"{k} {v:.3f}" for k, v in stats.items())
        ax.set_title(f"{label}\n{sub}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(classes) <= 12:
            ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)
    fig.suptitle(f"{method} of the penultimate features (test set), coloured by class (NAT Fig. 5); "
                 f"silhouette and intra/inter in the feature space", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def surface_plot(runs: dict, path: Path, eps: float) -> Path:
    """NuAT Fig. 1: one 3-D surface per run of the CE loss at ``x + a sign(grad) + b r`` (see
    :mod:`natbench.analysis.surface`). ``runs``: ``{label: (Surface, summary dict)}``."""
    plt = _plt()
    import numpy as np

    n = len(runs)
    fig = plt.figure(figsize=(5.0 * n, 4.6))
    for k, (label, (s, summ)) in enumerate(runs.items()):
        ax = fig.add_subplot(1, n, k + 1, projection="3d")
        aa, bb = np.meshgrid(s.a, s.b, indexing="ij")
        ax.plot_surface(aa / eps, bb / eps, s.loss, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_xlabel("a / eps (gradient sign)", fontsize=7)
        ax.set_ylabel("b / eps (orthogonal)", fontsize=7)
        ax.set_zlabel("CE loss", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(f"{label}\nloss at x {summ['loss_at_x']:.3g}; max along +g (a<=eps) {summ['max_along_g']:.3g}\n"
                     f"max along r {summ['max_along_r']:.3g}; max in the eps-ball (|a|+|b|<=eps) {summ['max_in_ball']:.3g}", fontsize=7)
    fig.suptitle(f"Loss surface around one test input (NuAT Fig. 1), eps = {eps:.4g}", fontsize=9, y=0.995)
    fig.subplots_adjust(top=0.8)  # the panels' three-line titles below the figure title
    return _save(fig, path)


def eps_curve_plot(runs: dict, path: Path, task_eps: float, attack: str, metric: str = "accuracy") -> Path:
    """Robust ``metric`` against eps, one line per run, the task's eps marked.
    ``runs``: ``{label: EpsCurve}`` (:mod:`natbench.analysis.robustness`)."""
    plt = _plt()

    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, c), col in zip(runs.items(), _colors(len(runs))):
        ax.plot(c.eps, [100 * a for a in c.accuracy], marker="o", ms=4, color=col, label=label)
    ax.axvline(task_eps, color="grey", ls="--", lw=1, label=f"task eps {task_eps:.4g}")
    ax.set(xlabel="eps (L-inf)", ylabel=f"{metric} (%)", ylim=(-2, 102),
           title=f"Robust {metric} against eps: {attack}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def ablation_plot(df, param: str, path: Path, robust_label: str, metric: str = "accuracy") -> Path:
    """NAT Fig. 2: best and last clean and robust ``metric`` (percent columns ``best_clean``,
    ``best_robust``, ``last_clean``, ``last_robust`` of ``df``) against the value of ``param``."""
    plt = _plt()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    try:
        x = df["value"].astype(float).tolist()
        ticks = None
    except (TypeError, ValueError):  # categorical values (e.g. nat.adversary=vanilla,at)
        ticks = [str(v) for v in df["value"]]
        x = list(range(len(ticks)))
    for ax, what in ((ax1, "clean"), (ax2, "robust")):
        for ck, ls in (("best", "-"), ("last", "--")):
            ys = df[f"{ck}_{what}"].tolist()
            ax.plot(x, ys, ls, marker="o", label=ck)
            for xi, yi in zip(x, ys):
                if yi == yi:
                    ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        if ticks is not None:
            ax.set_xticks(x)
            ax.set_xticklabels(ticks, fontsize=8)
        ax.margins(y=0.15)
        ax.set(xlabel=param, ylabel=f"{what} {metric} (%)",
               title=f"{what}" + (f" ({robust_label})" if what == "robust" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Ablation of {param} (NAT Fig. 2): test {metric}, best and last checkpoints", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def clean_vs_robust_plot(points: list[dict], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """One point per leaderboard row: ``{"label", "checkpoint", "x", "y", "xerr", "yerr"}`` (percent;
    an error is ``(below, above)`` the point, the row's 95 % interval, or one symmetric number; 0 or
    None: no bar). ``best`` filled circles, ``last`` open squares."""
    plt = _plt()

    def bar(e):
        if isinstance(e, (tuple, list)):
            return [[float(e[0])], [float(e[1])]] if any(e) else None
        return e or None

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    labels = list(dict.fromkeys(p["label"] for p in points))
    cols = dict(zip(labels, _colors(len(labels))))
    for p in points:
        best = p["checkpoint"] == "best"
        ax.errorbar(p["x"], p["y"], xerr=bar(p.get("xerr")), yerr=bar(p.get("yerr")), fmt="o" if best else "s",
                    color=cols[p["label"]], mfc=cols[p["label"]] if best else "none", ms=7, capsize=3,
                    label=f"{p['label']} ({p['checkpoint']})")
        if len(labels) <= 4:  # more labels overlap in clusters: the legend names every point
            ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    return _save(fig, path)
