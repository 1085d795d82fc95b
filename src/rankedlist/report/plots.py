"""The report's pictures: training curves, Recall@K, a 2-D map of the embeddings, a retrieval grid.

Every function draws on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, so
no global state, no GUI backend and no figure leak across calls), imports matplotlib inside itself
(``import rankedlist`` stays fast), writes one PNG atomically (:mod:`rankedlist.atomic_write`) and
returns its path, or ``None`` when there is nothing to draw (the report then says why).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.atomic_write import atomic_write
from rankedlist.report.neighbors import neighbor_matches, pick_queries, top_k_neighbors
from rankedlist.report.published_results import PublishedResult

#: Border colours of the retrieval grid (RGB hex): right class, wrong class, the query itself.
RIGHT_COLOR = "#1a9641"
WRONG_COLOR = "#d7191c"
QUERY_COLOR = "#2c7bb6"

_DPI = 110
_HEAD_ORDER = ("low", "mid", "high")


def _figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    """A pyplot-free figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG through :func:`rankedlist.atomic_write.atomic_write`: a full disk or
    an interruption leaves the previous picture (or none), never half a PNG."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=_DPI, facecolor="white"))


def _style(ax: Any) -> None:
    ax.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# --------------------------------------------------------------------------- training curves


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the records that hold a finite number under ``key``."""
    steps, values = [], []
    for i, record in enumerate(history):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            continue
        if not math.isfinite(float(value)):
            continue
        step = record.get("step", i)
        steps.append(float(step) if isinstance(step, int | float | np.number) else float(i))
        values.append(float(value))
    return np.asarray(steps), np.asarray(values)


def _ema(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average (the usual smoothing of a noisy loss curve)."""
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = alpha * v + (1.0 - alpha) * acc
        out[i] = acc
    return out


def _val_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for record in history:
        for key in record:
            # lone_queries is a count, not a ratio: it does not belong on a percent axis.
            if key.startswith("val/") and not key.endswith("lone_queries"):
                keys[key] = None

    def order(key: str) -> tuple[int, float, str]:
        name = key.rsplit("/", 1)[-1]
        if name.startswith("recall@") and name[7:].isdigit():
            return (0, float(name[7:]), key)
        return (1, 0.0, key)

    return sorted(keys, key=order)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Loss, active pairs, non-zero fraction, learning rate, throughput and validation vs step.

    Panels whose keys never occur in ``history`` are left out; returns ``None`` (nothing written)
    when no panel has data.
    """
    panels: list[tuple[str, list[tuple[str, str]], dict[str, Any]]] = []
    all_keys = {key for record in history for key in record}
    loss_keys = ["loss"] + sorted(k for k in all_keys if k.startswith("loss/"))
    panels.append(("Training loss", [(k, k) for k in loss_keys], {"smooth": True}))
    panels.append(
        ("Active pairs per query", [("active_pos", "positives"), ("active_neg", "negatives")], {})
    )
    panels.append(("Queries with a non-zero loss", [("nonzero_frac", "fraction")], {"unit": True}))
    panels.append(("Learning rate", [("lr", "lr")], {"log": True}))
    panels.append(("Throughput (images/s)", [("images_per_s", "images/s")], {"smooth": True}))
    val = [(k, k.removeprefix("val/")) for k in _val_keys(history)]
    panels.append(("Validation metrics (%)", val, {"percent": True, "markers": True}))

    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    drawn = []
    for title, keys, opts in panels:
        series = [(label, *_series(history, key)) for key, label in keys]
        series = [s for s in series if len(s[1])]
        if series:
            drawn.append((title, series, opts))
    if not drawn:
        return None

    ncols = min(3, len(drawn))
    nrows = math.ceil(len(drawn) / ncols)
    width, height = 4.6 * ncols, 3.3 * nrows
    # Fixed margins in inches: the constrained layout engine costs seconds for six panels.
    fig = _figure(width, height, layout=None)
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.2 / width,
        bottom=0.55 / height,
        top=1 - 0.35 / height,
        wspace=0.24,
        hspace=0.45,
    )
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for ax, (title, series, opts) in zip(axes, drawn, strict=False):
        _style(ax)
        for j, (label, steps, values) in enumerate(series):
            color = colors[j % len(colors)]
            if opts.get("percent"):
                values = 100.0 * values
            marker = "o" if opts.get("markers") or len(values) <= 12 else None
            if opts.get("smooth") and len(values) > 20:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                span = max(5, len(values) // 25)
                ax.plot(
                    steps,
                    _ema(values, span),
                    color=color,
                    linewidth=1.8,
                    label=f"{label} (EMA {span})",
                )
            else:
                ax.plot(
                    steps,
                    values,
                    color=color,
                    linewidth=1.6,
                    marker=marker,
                    markersize=3.5,
                    label=label,
                )
        positive = all((s[2] > 0).all() for s in series)
        # Log scale only when the values span more than about a decade (a multistep schedule);
        # a two-level schedule reads better on a linear axis.
        if (
            opts.get("log")
            and positive
            and max(s[2].max() for s in series) > 20 * min(s[2].min() for s in series)
        ):
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
        elif opts.get("log"):
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        if opts.get("unit"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
        smoothed = opts.get("smooth") and any(len(v) > 20 for _, _, v in series)
        if len(series) > 1 or smoothed or opts.get("percent"):
            ax.legend(fontsize=8, frameon=False)
    for ax in axes[len(drawn) :]:
        ax.set_visible(False)
    return _save(fig, path)


# --------------------------------------------------------------------------- Recall@K


def plot_recall_at_k(
    test_metrics: Mapping[str, Mapping[str, Any]],
    ks: Sequence[int],
    path: str | Path,
    published: Sequence[PublishedResult] = (),
) -> Path | None:
    """Recall@K (%) over the protocol's K: the fused embedding, each head, and published rows.

    K is drawn on evenly spaced positions labelled with its value (1, 2, 4, 8 or 1, 10, 100, 1000
    read better that way than on a linear or log axis). Returns ``None`` when no Recall@K is known.
    """
    ks = [k for k in ks if any(f"recall@{k}" in m for m in test_metrics.values())]
    if not ks:
        return None
    x = np.arange(len(ks))
    fig = _figure(max(7.5, 1.0 * len(ks) + 5.0), 4.2)
    ax = fig.subplots()
    _style(ax)

    def values(metrics: Mapping[str, Any], scale: float) -> tuple[np.ndarray, np.ndarray]:
        pos, val = [], []
        for i, k in enumerate(ks):
            v = metrics.get(f"recall@{k}")
            if isinstance(v, int | float | np.number) and math.isfinite(float(v)):
                pos.append(i)
                val.append(scale * float(v))
        return np.asarray(pos), np.asarray(val)

    lowest = 100.0
    head_colors = {"low": "#a6cee3", "mid": "#1f78b4", "high": "#33a02c"}
    for name in [h for h in _HEAD_ORDER if h in test_metrics] + sorted(
        h for h in test_metrics if h not in _HEAD_ORDER and h != "fused"
    ):
        pos, val = values(test_metrics[name], 100.0)
        if len(val):
            ax.plot(
                pos,
                val,
                marker="s",
                markersize=4,
                linewidth=1.2,
                linestyle="--",
                color=head_colors.get(name, "#999999"),
                label=f"this run: {name} head",
            )
            lowest = min(lowest, val.min())
    greys = ["#6a3d9a", "#333333", "#999999", "#b15928"]  # published rows: muted, distinct
    shown = [p for p in published if sum(f"recall@{k}" in p.metrics for k in ks) > 0][:4]
    for j, row in enumerate(shown):
        pos, val = values(row.metrics, 1.0)
        ax.plot(
            pos,
            val,
            marker="^",
            markersize=6 if len(val) == 1 else 5,
            linewidth=1.2,
            linestyle=":",
            color=greys[j % len(greys)],
            label=row.method,
        )
        if len(val) == 1:  # a lone point (R@1 only): print its value beside it
            ax.annotate(
                f"{val[0]:.1f}",
                (pos[0], val[0]),
                textcoords="offset points",
                xytext=(7, 0),
                va="center",
                fontsize=8,
                color=greys[j % len(greys)],
            )
        lowest = min(lowest, val.min())
    if "fused" in test_metrics:
        pos, val = values(test_metrics["fused"], 100.0)
        if len(val):
            label = "this run" if len(test_metrics) == 1 else "this run: fused"
            ax.plot(
                pos,
                val,
                marker="o",
                markersize=6,
                linewidth=2.4,
                color="#d95f02",
                label=label,
                zorder=5,
            )
            for p, v in zip(pos, val, strict=True):
                ax.annotate(
                    f"{v:.1f}",
                    (p, v),
                    textcoords="offset points",
                    xytext=(0, 8),
                    ha="center",
                    fontsize=9,
                    color="#d95f02",
                    fontweight="bold",
                    zorder=6,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
                )
            lowest = min(lowest, val.min())
    ax.set_xticks(x, [str(k) for k in ks])
    ax.set_xlim(-0.4, len(ks) - 0.6)
    ax.set_ylim(max(0.0, math.floor((lowest - 8) / 10) * 10), 103)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_title("Recall@K on the test split", fontsize=11)
    # The run's own line first in the legend, which sits outside the axes so it hides no line.
    handles, names = ax.get_legend_handles_labels()
    order = sorted(
        range(len(names)), key=lambda i: not names[i].startswith("this run") or "head" in names[i]
    )
    ax.legend(
        [handles[i] for i in order],
        [names[i] for i in order],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    return _save(fig, path)


# --------------------------------------------------------------------------- embedding map


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


def plot_embedding_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    max_points: int = 1500,
    max_classes: int = 20,
    seed: int = 0,
) -> Path | None:
    """A t-SNE map of a seeded subsample of the test embeddings, one colour per class.

    Returns ``None`` (nothing written) when fewer than two points are available.
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    if len(embeddings) < 2:
        return None
    rows = subsample_for_map(labels, max_points=max_points, max_classes=max_classes, seed=seed)
    if len(rows) < 2:
        return None
    coords = embed_2d(embeddings[rows], seed=seed)
    sub_labels = labels[rows]
    classes = np.unique(sub_labels)

    import matplotlib

    cmap = matplotlib.colormaps["tab20" if len(classes) > 10 else "tab10"]
    fig = _figure(9.0, 6.6)
    ax = fig.subplots()
    size = float(np.clip(6000.0 / len(rows), 14.0, 70.0))  # bigger dots when there are few
    for j, c in enumerate(classes):
        pts = coords[sub_labels == c]
        name = _class_name(class_names, c)
        color = cmap(j % cmap.N)
        ax.scatter(pts[:, 0], pts[:, 1], s=size, color=color, alpha=0.8, linewidths=0, label=name)
        cx, cy = np.median(pts, axis=0)
        ax.annotate(
            _short(name, 12),
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
        [_short(_class_name(class_names, c), 18) for c in classes],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        markerscale=1.6,
        title="class",
    )
    return _save(fig, path)


# --------------------------------------------------------------------------- retrieval grid


def _class_name(class_names: Sequence[str] | None, label: Any) -> str:
    try:
        idx = int(label)
    except (TypeError, ValueError):
        return str(label)
    if class_names is not None and 0 <= idx < len(class_names):
        return str(class_names[idx])
    return f"class {idx}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _thumbnail(image: Any, size: int) -> np.ndarray:
    """The image fitted into a white ``size x size`` square (up- or down-scaled, aspect kept)."""
    from PIL import Image, ImageOps

    image = image.convert("RGB")
    fitted = ImageOps.contain(image, (size, size), method=Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return np.asarray(canvas)


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


# Geometry of the retrieval grid, in output pixels (the mosaic is shown 1:1, so borders are exact).
_THUMB = 150  # image side
_BORDER = 7  # coloured frame
_GAP = 12  # between neighbours
_QUERY_GAP = 40  # between the query and its first neighbour
_LABEL_H = 24  # caption under each cell
_ROW_GAP = 10
_TOP = 62  # title and column headers
_SIDE = 14  # left/right margin


def retrieval_grid_figure(
    embeddings: np.ndarray,
    labels: np.ndarray,
    dataset: Any,
    n_queries: int = 8,
    k: int = 5,
    query_count: int | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Draw the retrieval grid; return ``(figure, info)`` without saving.

    The images and their coloured frames are painted into one pixel mosaic that the figure shows
    at 1:1 (one mosaic pixel = one PNG pixel, no resampling), with the text drawn by matplotlib on
    top; this is an order of magnitude faster than one axes per cell and makes the colours exact.

    ``info`` holds ``query_rows`` (Q), ``neighbor_rows``, ``similarities`` and ``matches`` (Q x k),
    and ``boxes``: ``boxes[i][0]`` is the ``(x0, y0, x1, y1)`` pixel box (PNG coordinates, end
    exclusive, frame included) of query i, ``boxes[i][j]`` that of its j-th neighbour, framed in
    :data:`RIGHT_COLOR` when ``matches[i, j - 1]`` else :data:`WRONG_COLOR`.
    """
    labels = np.asarray(labels)
    query_rows = pick_queries(labels, n_queries, query_count=query_count, seed=seed)
    sims, neighbor_rows = top_k_neighbors(embeddings, query_rows, k, query_count=query_count)
    matches = neighbor_matches(labels, query_rows, neighbor_rows)
    k_eff = neighbor_rows.shape[1]
    class_names = getattr(dataset, "classes", None)

    cell = _THUMB + 2 * _BORDER
    width = 2 * _SIDE + cell * (k_eff + 1) + _QUERY_GAP + _GAP * max(k_eff - 1, 0)
    row_h = cell + _LABEL_H + _ROW_GAP
    height = _TOP + row_h * len(query_rows)
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    col_x = [_SIDE] + [_SIDE + cell + _QUERY_GAP + j * (cell + _GAP) for j in range(k_eff)]

    texts: list[tuple[float, float, str, str, dict[str, Any]]] = []
    boxes = []
    for i, q in enumerate(query_rows):
        y0 = _TOP + i * row_h
        cells = [(int(q), QUERY_COLOR, _short(_class_name(class_names, labels[q]), 22), "black")]
        for j in range(k_eff):
            r = int(neighbor_rows[i, j])
            color = RIGHT_COLOR if matches[i, j] else WRONG_COLOR
            mark = "✓" if matches[i, j] else "✗"
            name = _short(_class_name(class_names, labels[r]), 14)
            cells.append((r, color, f"{mark} {name}  {sims[i, j]:.2f}", color))
        row_boxes = []
        for x0, (row, color, caption, text_color) in zip(col_x, cells, strict=True):
            mosaic[y0 : y0 + cell, x0 : x0 + cell] = _hex_rgb(color)
            inner = (
                slice(y0 + _BORDER, y0 + _BORDER + _THUMB),
                slice(x0 + _BORDER, x0 + _BORDER + _THUMB),
            )
            mosaic[inner] = _thumbnail(dataset.load_image(row), _THUMB)
            row_boxes.append((x0, y0, x0 + cell, y0 + cell))
            texts.append((x0 + cell / 2, y0 + cell + 4, caption, text_color, {"fontsize": 9}))
        boxes.append(row_boxes)
    headers = ["query"] + [f"top-{j + 1}" for j in range(k_eff)]
    for x0, header in zip(col_x, headers, strict=True):
        texts.append(
            (x0 + cell / 2, _TOP - 20, header, "black", {"fontsize": 10, "fontweight": "bold"})
        )
    where = "gallery " if query_count is not None else ""
    texts.append(
        (
            width / 2,
            8,
            f"{len(query_rows)} seeded random queries and their {k_eff} nearest {where}images",
            "black",
            {"fontsize": 11},
        )
    )
    texts.append(
        (
            width / 2,
            26,
            "green: same class · red: another class · number: cosine similarity",
            "#444444",
            {"fontsize": 9},
        )
    )

    fig = _figure(width / _DPI, height / _DPI, layout=None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(mosaic, interpolation="none")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    for x, y, text, color, style in texts:
        ax.text(x, y, text, color=color, ha="center", va="top", **style)
    info = {
        "query_rows": query_rows,
        "neighbor_rows": neighbor_rows,
        "matches": matches,
        "similarities": sims,
        "boxes": boxes,
    }
    return fig, info


def plot_retrieval_grid(
    embeddings: np.ndarray,
    labels: np.ndarray,
    dataset: Any,
    path: str | Path,
    n_queries: int = 8,
    k: int = 5,
    query_count: int | None = None,
    seed: int = 0,
) -> Path | None:
    """Save the grid of :func:`retrieval_grid_figure`; ``None`` when no query has a neighbour.

    ``dataset.load_image(i)`` must show row ``i`` of ``embeddings``.
    """
    if len(embeddings) < 2:
        return None
    fig, info = retrieval_grid_figure(
        embeddings, labels, dataset, n_queries=n_queries, k=k, query_count=query_count, seed=seed
    )
    if info["neighbor_rows"].shape[1] == 0:
        return None
    return _save(fig, path)
