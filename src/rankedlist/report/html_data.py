"""The data ``report.html`` shows beyond its headline, as one JSON-ready dict: the hardest
queries with their neighbours, the most confused class pairs, per-class results, class pages and
the embedding map, with the thumbnails they use.

Statistics cover every query (:mod:`rankedlist.report.failure_analysis`); what is shown with
pictures is a bounded sample, said in ``sampled`` so the page can tell the reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankedlist.report.failure_analysis import FailureAnalysis, first_correct_ranks
from rankedlist.report.figures import class_name
from rankedlist.report.neighbors import top_k_neighbors
from rankedlist.report.thumbnails import MAP_SIZE, ThumbnailStore


@dataclass(frozen=True)
class ShownLimits:
    """How much of a test split gets pictures (the statistics always cover all of it)."""

    hardest: int = 50  # queries in the hardest-queries list
    neighbors: int = 8  # neighbours shown per hardest query
    pair_examples: int = 4  # thumbnails per class of a confused pair
    class_pages: int = 40  # classes with a page of thumbnails (the worst, then those listed)
    class_images: int = 6  # images per class page


def page_data(
    analysis: FailureAnalysis,
    embeddings: np.ndarray,
    labels: np.ndarray,
    dataset: Any,
    query_count: int | None,
    layout: tuple[np.ndarray, np.ndarray] | None,
    limits: ShownLimits = ShownLimits(),
) -> dict[str, Any]:
    """Everything the page's script renders; thumbnails under ``thumbs`` by key."""
    labels = np.asarray(labels, dtype=np.int64)
    thumbs = ThumbnailStore(dataset)
    names = getattr(dataset, "classes", None)
    hardest = _hardest(analysis, embeddings, labels, query_count, thumbs, limits)
    pairs = _pairs(analysis, labels, query_count, thumbs, limits)
    listed = [q["cls"] for q in hardest] + [c for p in pairs for c in (p["a"], p["b"])]
    pages = _class_pages(analysis, embeddings, labels, query_count, thumbs, limits, listed)
    points = _map_points(embeddings, labels, query_count, layout, thumbs)
    used = set(analysis.class_ids.tolist()) | {n["cls"] for q in hardest for n in q["neighbors"]}
    used |= {int(p[2]) for p in points} | {int(p[4]) for p in points if p[4] is not None}
    return {
        "names": {str(c): class_name(names, c) for c in sorted(used)},
        "hardest": hardest,
        "pairs": pairs,
        "classStats": [
            [int(c), int(n), float(r1), float(m)]
            for c, n, r1, m in zip(
                analysis.class_ids,
                analysis.class_queries,
                analysis.class_recall_at_1,
                analysis.class_map_at_r,
                strict=True,
            )
        ],
        "classPages": pages,
        "map": points,
        "thumbs": thumbs.uris,
        "sampled": _sampled_text(analysis, hardest, pairs, pages, points, dataset is None),
    }


def _neighbor(row: int, cls: int, sim: float, ok: bool, thumb: str | None) -> dict[str, Any]:
    return {"row": int(row), "cls": int(cls), "sim": round(float(sim), 4), "ok": bool(ok),
            "thumb": thumb}  # fmt: skip


def _hardest(
    analysis: FailureAnalysis,
    embeddings: np.ndarray,
    labels: np.ndarray,
    query_count: int | None,
    thumbs: ThumbnailStore,
    limits: ShownLimits,
) -> list[dict[str, Any]]:
    """The lowest-AP queries, lowest first, each with its top neighbours marked right/wrong."""
    picked = analysis.hardest(limits.hardest)
    rows = analysis.query_rows[picked]
    sims, found = top_k_neighbors(embeddings, rows, limits.neighbors, query_count=query_count)
    first = first_correct_ranks(embeddings, labels, rows, query_count)
    out = []
    for i, (q, j) in enumerate(zip(rows, picked, strict=True)):
        neighbors = [
            _neighbor(r, labels[r], s, labels[r] == labels[q], thumbs.key(r))
            for r, s in zip(found[i], sims[i], strict=True)
        ]
        out.append(
            {
                "row": int(q),
                "cls": int(labels[q]),
                "ap": float(analysis.average_precision[j]),
                "firstCorrect": int(first[i]) + 1,  # 1-based, as readers count
                "thumb": thumbs.key(q),
                "neighbors": neighbors,
            }
        )
    return out


def _examples(labels: np.ndarray, cls: int, count: int, rows_limit: int) -> list[int]:
    """The first ``count`` rows of class ``cls`` among the first ``rows_limit`` rows."""
    rows = np.flatnonzero(labels[:rows_limit] == cls)
    return rows[:count].tolist()


def _pairs(
    analysis: FailureAnalysis,
    labels: np.ndarray,
    query_count: int | None,
    thumbs: ThumbnailStore,
    limits: ShownLimits,
) -> list[dict[str, Any]]:
    out = []
    for pair in analysis.confused_pairs:
        shown = {}
        for side in ("a", "b"):
            rows = _examples(labels, getattr(pair, side), limits.pair_examples, len(labels))
            shown[side] = [{"row": r, "thumb": thumbs.key(r)} for r in rows]
        out.append({"a": pair.a, "b": pair.b, "ab": pair.a_to_b, "ba": pair.b_to_a,
                    "aImages": shown["a"], "bImages": shown["b"]})  # fmt: skip
    return out


def _class_pages(
    analysis: FailureAnalysis,
    embeddings: np.ndarray,
    labels: np.ndarray,
    query_count: int | None,
    thumbs: ThumbnailStore,
    limits: ShownLimits,
    listed: Sequence[int],
) -> dict[str, list[dict[str, Any]]]:
    """Pages for the worst classes (Recall@1, then MAP@R) and those the lists above name: each
    a few of the class's queries with where their nearest neighbour lands."""
    worst = analysis.class_ids[np.lexsort((analysis.class_map_at_r, analysis.class_recall_at_1))]
    chosen = list(dict.fromkeys([*listed, *worst.tolist()]))[: limits.class_pages]
    q_limit = len(labels) if query_count is None else query_count
    rows_by_class = {c: _examples(labels, c, limits.class_images, q_limit) for c in chosen}
    all_rows = np.array([r for rows in rows_by_class.values() for r in rows], dtype=np.int64)
    sims, found = top_k_neighbors(embeddings, all_rows, 1, query_count=query_count)
    nearest = {}
    if found.shape[1]:  # else a gallery with nothing to land on
        nearest = dict(
            zip(all_rows.tolist(), zip(found[:, 0], sims[:, 0], strict=True), strict=True)
        )
    pages = {}
    for c, rows in rows_by_class.items():
        items = []
        for r in rows:
            if r not in nearest:
                continue
            n, s = nearest[r]
            landing = _neighbor(n, labels[n], s, labels[n] == c, thumbs.key(n))
            items.append({"row": r, "thumb": thumbs.key(r), "nn": landing})
        pages[str(c)] = items
    return pages


def _map_points(
    embeddings: np.ndarray,
    labels: np.ndarray,
    query_count: int | None,
    layout: tuple[np.ndarray, np.ndarray] | None,
    thumbs: ThumbnailStore,
) -> list[list[Any]]:
    """``[x, y, class, row, nearest class or None, thumbnail]`` per map point, ``x, y`` in
    [0, 1]; the nearest neighbour is searched for the points that are queries."""
    if layout is None:
        return []
    rows, coords = layout
    span = np.maximum(coords.max(axis=0) - coords.min(axis=0), 1e-12)
    unit = (coords - coords.min(axis=0)) / span
    is_query = rows < (len(labels) if query_count is None else query_count)
    nearest: dict[int, int] = {}
    _, found = top_k_neighbors(embeddings, rows[is_query], 1, query_count=query_count)
    if found.shape[1]:
        nearest = dict(zip(rows[is_query].tolist(), labels[found[:, 0]].tolist(), strict=True))
    return [
        [
            round(float(x), 4),
            round(float(y), 4),
            int(labels[r]),
            int(r),
            nearest.get(int(r)),
            thumbs.key(r, MAP_SIZE),
        ]  # fmt: skip
        for (x, y), r in zip(unit, rows, strict=True)
    ]


def _sampled_text(
    analysis: FailureAnalysis,
    hardest: list,
    pairs: list,
    pages: dict,
    points: list,
    no_images: bool,
) -> str:
    n = len(analysis.query_rows)
    text = (
        f"Statistics cover all {n:,} queries with a relevant image and all "
        f"{len(analysis.class_ids):,} of their classes. Shown: the {len(hardest)} hardest "
        f"queries, the {len(pairs)} most confused class pairs, pages for {len(pages)} classes "
        f"(the worst by Recall@1 and those named above) and a map of {len(points):,} points."
    )
    if no_images:
        text += " No images were available to this report, so no thumbnails are shown."
    return text
