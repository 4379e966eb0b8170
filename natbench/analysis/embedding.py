"""2-D embedding of penultimate features, coloured by class (NAT paper Fig. 5), and two numbers that
say what the picture shows about class separation, computed in the *feature space* (an embedding
distorts distances):

- ``silhouette``: scikit-learn's mean silhouette coefficient of the features with the class labels
  (Euclidean; in [-1, 1], 1 = tight, well-separated classes);
- ``intra_inter``: mean distance of a sample to the other samples of its class (over all same-class
  pairs) divided by the mean distance between class centroids (over all pairs of classes); smaller
  = more compact classes relative to their separation (the paper: "larger inter-class separation
  and smaller intra-class compactness").

The embedding is UMAP (``umap-learn``, McInnes et al. 2018; the paper's choice) when it can be
imported, else t-SNE (scikit-learn, PCA init); :func:`embed_2d` returns which one ran. natbench does
not depend on umap-learn.
"""
from __future__ import annotations

import numpy as np


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem means: use t-SNE
        return False
    return True


def embed_2d(features, *, seed: int = 0, method: str = "auto") -> tuple[np.ndarray, str]:
    """``(Y (N, 2), method name)``; ``method``: ``auto`` (UMAP if importable, else t-SNE), ``umap``
    or ``tsne``."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if method not in ("auto", "umap", "tsne"):
        raise ValueError(f"method {method!r}: expected auto, umap or tsne")
    if len(x) < 3:
        raise ValueError(f"a 2-D embedding needs at least 3 samples, got {len(x)}")
    if method == "umap" or (method == "auto" and umap_available()):
        import umap

        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1))
        return np.asarray(reducer.fit_transform(x)), "UMAP"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
    return np.asarray(tsne.fit_transform(x)), "t-SNE"


def separation(features, y) -> dict[str, float]:
    """``{"silhouette", "intra_inter"}`` of ``features`` (N, D) with labels ``y`` (see the module
    docstring); NaN when fewer than two classes have samples."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(y)
    classes = [c for c in np.unique(y)]
    if len(classes) < 2:
        return {"silhouette": float("nan"), "intra_inter": float("nan")}
    from scipy.spatial.distance import pdist
    from sklearn.metrics import silhouette_score

    sil = float(silhouette_score(x, y)) if len(x) > len(classes) else float("nan")
    intra = [pdist(x[y == c]) for c in classes]
    intra = np.concatenate([d for d in intra if d.size]) if any(d.size for d in intra) else np.zeros(0)
    centroids = np.stack([x[y == c].mean(0) for c in classes])
    inter = pdist(centroids)
    ratio = float(intra.mean() / inter.mean()) if intra.size and inter.mean() > 0 else float("nan")
    return {"silhouette": sil, "intra_inter": ratio}
