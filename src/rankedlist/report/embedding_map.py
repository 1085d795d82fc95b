"""The embedding-map picture: a seeded subsample of the test embeddings, laid out by t-SNE."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rankedlist.report.figures import class_name, drawable, new_figure, save_png, shorten


def subsample_for_map(
    labels: np.ndarray, max_points: int = 1500, max_classes: int = 20, seed: int = 0
) -> np.ndarray:
    """Seeded row indices: at most ``max_classes`` classes, at most ``max_points`` rows in all.

    Classes with at least two rows are preferred (a lone point shows no cluster); each chosen
    class keeps up to ``max_points // n_classes`` of its rows.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    multi = classes[counts >= 2]
    pool = multi if len(multi) else classes
    chosen = rng.choice(pool, size=min(max_classes, len(pool)), replace=False)
    per_class = max(1, max_points // len(chosen))
    rows = []
    for c in np.sort(chosen):
        members = np.flatnonzero(labels == c)
        if len(members) > per_class:
            members = rng.choice(members, size=per_class, replace=False)
        rows.append(members)
    return np.sort(np.concatenate(rows))[:max_points]


def embed_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates of the rows of ``x``: t-SNE (PCA init, seeded), PCA below 5 points."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if x.shape[1] == 1:
        return np.concatenate([x, np.zeros_like(x)], axis=1)
    if n < 5:  # too few points for a meaningful neighbourhood: a PCA projection says as much
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    # One thread: t-SNE's OpenMP threads spin-wait, and on a busy 2-core machine (training just
    # finished, tests in parallel) two threads measured 3-6x slower than one. 500 iterations
    # (250 of them early exaggeration) settle a map of <= 1,500 points; 1,000 doubles the time.
    with threadpool_limits(limits=1):
        if x.shape[1] > 50 and n > 50:
            # The usual t-SNE preprocessing: 50 PCA components keep the structure, cut the time.
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        # t-SNE requires perplexity < n; 30 is the usual value for a few hundred points or more.
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            max_iter=500,
            random_state=seed,
        )
        return tsne.fit_transform(x)


def map_layout(
    embeddings: np.ndarray,
    labels: np.ndarray,
    max_points: int = 1500,
    max_classes: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, coords)``: the seeded subsample of :func:`subsample_for_map` and its 2-D layout
    (:func:`embed_2d`), or ``None`` with fewer than two points. The PNG and ``report.html`` show
    this one layout."""
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    if len(embeddings) < 2:
        return None
    rows = subsample_for_map(labels, max_points=max_points, max_classes=max_classes, seed=seed)
    if len(rows) < 2:
        return None
    return rows, embed_2d(embeddings[rows], seed=seed)


def plot_embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    max_points: int = 1500,
    max_classes: int = 20,
    seed: int = 0,
    layout: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path | None:
    """A t-SNE map of a seeded subsample of the test embeddings, one colour per class.

    ``layout`` is a :func:`map_layout` already computed (else it is computed here). Returns
    ``None`` (nothing written) when fewer than two points are available.
    """
    labels = np.asarray(labels)
    if layout is None:
        layout = map_layout(embeddings, labels, max_points, max_classes, seed)
    if layout is None:
        return None
    rows, coords = layout
    sub_labels = labels[rows]
    classes = np.unique(sub_labels)

    import matplotlib

    cmap = matplotlib.colormaps["tab20" if len(classes) > 10 else "tab10"]
    fig = new_figure(9.0, 6.6)
    ax = fig.subplots()
    size = float(np.clip(6000.0 / len(rows), 14.0, 70.0))  # bigger dots when there are few
    for j, c in enumerate(classes):
        pts = coords[sub_labels == c]
        name = drawable(class_name(class_names, c))
        color = cmap(j % cmap.N)
        ax.scatter(pts[:, 0], pts[:, 1], s=size, color=color, alpha=0.8, linewidths=0, label=name)
        cx, cy = np.median(pts, axis=0)
        ax.annotate(
            shorten(name, 12),
            (cx, cy),
            fontsize=9,
            fontweight="bold",
            ha="center",
            va="center",
            color="black",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": color, "alpha": 0.75},
        )
    ax.set_xticks([])
    ax.set_yticks([])
    method = "t-SNE" if len(rows) >= 5 else "PCA"
    ax.set_title(
        f"{method} of {len(rows)} test embeddings from {len(classes)} classes (seeded subsample)",
        fontsize=11,
    )
    ax.legend(
        [shorten(drawable(class_name(class_names, c)), 18) for c in classes],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        markerscale=1.6,
        title="class",
    )
    return save_png(fig, path)
