"""The retrieval-grid picture: seeded queries and their nearest images, framed right or wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.report.figures import DPI, class_name, drawable, new_figure, save_png, shorten
from rankedlist.report.neighbors import neighbor_matches, pick_queries, top_k_neighbors

#: Border colours of the retrieval grid (RGB hex): right class, wrong class, the query itself.
RIGHT_COLOR = "#1a9641"
WRONG_COLOR = "#d7191c"
QUERY_COLOR = "#2c7bb6"


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
        query_name = shorten(drawable(class_name(class_names, labels[q])), 22)
        cells = [(int(q), QUERY_COLOR, query_name, "black")]
        for j in range(k_eff):
            r = int(neighbor_rows[i, j])
            color = RIGHT_COLOR if matches[i, j] else WRONG_COLOR
            mark = "✓" if matches[i, j] else "✗"
            name = shorten(drawable(class_name(class_names, labels[r])), 14)
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

    fig = new_figure(width / DPI, height / DPI, layout=None)
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
    return save_png(fig, path)
