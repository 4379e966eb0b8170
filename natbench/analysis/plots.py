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
