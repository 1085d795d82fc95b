"""A PNG of search results: each query image followed by its nearest images and similarities."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rankedlist.retrieval.embedding_index import Match

__all__ = ["save_search_picture", "RIGHT_COLOR", "WRONG_COLOR", "NEUTRAL_COLOR"]

RIGHT_COLOR = "#2ca02c"  # green: the hit has the query's label
WRONG_COLOR = "#d62728"  # red: another label
NEUTRAL_COLOR = "#9e9e9e"  # grey: the query's label is unknown
QUERY_COLOR = "#1f77b4"
_THUMB = 128  # thumbnail side in pixels


def _thumbnail(path: Path) -> np.ndarray:
    """The image fitted into a white square; a grey square when it cannot be read."""
    from PIL import Image, ImageOps

    from rankedlist.data import read_rgb

    try:
        image = read_rgb(path)
    except OSError:  # a file moved or deleted since indexing: show the gap, do not fail
        return np.full((_THUMB, _THUMB, 3), 200, dtype=np.uint8)
    image = ImageOps.contain(image, (_THUMB, _THUMB), method=Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (_THUMB, _THUMB), (255, 255, 255))
    canvas.paste(image, ((_THUMB - image.width) // 2, (_THUMB - image.height) // 2))
    return np.asarray(canvas)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def save_search_picture(
    query_paths: Sequence[str | os.PathLike],
    results: Sequence[Sequence[Match]],
    path: str | os.PathLike,
    k: int | None = None,
    query_labels: Sequence[int | None] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a grid: one row per query, the query then its top-``k`` hits with similarities.

    Args:
        query_paths: the query image files.
        results: what :func:`search_images` (or ``EmbeddingIndex.search_items``) returned.
        path: the PNG to write (parent folders are created).
        k: hits shown per query (default: all returned).
        query_labels: the queries' labels, when known: hits are then framed green (same label)
            or red (another); otherwise grey. ``None`` entries mean unknown.
        class_names: ``class_names[label]`` captions the labels (``index.meta["classes"]``).

    Returns:
        The path written.
    """
    # Agg through Figure directly: no pyplot global state, no display needed.
    from matplotlib.figure import Figure

    if len(query_paths) != len(results):
        raise ValueError(
            f"{len(query_paths)} query paths but {len(results)} result lists: pass the queries "
            "that were searched"
        )
    if not results:
        raise ValueError("no queries to draw")
    if query_labels is not None and len(query_labels) != len(query_paths):
        raise ValueError(f"query_labels has {len(query_labels)} entries, queries {len(results)}")
    cols = max(len(r) for r in results) if k is None else int(k)
    if cols < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")

    def caption(label: int | None) -> str:
        if label is None:
            return ""
        if class_names is not None and 0 <= label < len(class_names):
            return _short(str(class_names[label]), 16)
        return f"label {label}"

    rows = len(results)
    fig = Figure(figsize=(1.6 * (cols + 1), 2.1 * rows + 0.4), dpi=100)
    axes = fig.subplots(rows, cols + 1, squeeze=False)
    for i, (qpath, hits) in enumerate(zip(query_paths, results, strict=True)):
        qlabel = None if query_labels is None else query_labels[i]
        qname = Path(qpath).parent.name + "/" + Path(qpath).name  # the folder often names the class
        cells = [(Path(qpath), QUERY_COLOR, f"query\n{_short(qname, 20)}")]
        for match in list(hits)[:cols]:
            if qlabel is None or match.label is None:
                color, mark = NEUTRAL_COLOR, ""
            elif match.label == qlabel:
                color, mark = RIGHT_COLOR, "✓ "
            else:
                color, mark = WRONG_COLOR, "✗ "
            text = f"{mark}{match.similarity:.3f}\n{_short(Path(match.item).name, 18)}"
            extra = caption(match.label)
            cells.append((match.path, color, text + (f"\n{extra}" if extra else "")))
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(cells):
                ax.set_axis_off()
                continue
            image_path, color, text = cells[j]
            ax.imshow(_thumbnail(image_path), interpolation="nearest")
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4)
            ax.set_xlabel(text, fontsize=7, color="black" if color == NEUTRAL_COLOR else color)
    fig.suptitle(
        "query (blue) and its nearest images · number: cosine similarity"
        + (" · green: same label, red: another" if query_labels is not None else ""),
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
