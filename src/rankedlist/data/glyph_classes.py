"""Which characters become classes: look-alikes are dropped by their measured pixel similarity.

A pair of characters is near-identical in a font when the normalised L1 distance of their ink,
``sum|a - b| / (sum a + sum b)``, is at most ``ambiguity_threshold`` (0.03: identical outlines give
0, while ``Й`` vs ``И`` or ``Ё`` vs ``Е`` give 0.04-0.08 and ``l`` vs ``I`` 0.06 or more). When that
holds in at least ``ambiguity_fraction`` (half) of the fonts that render both, retrieval between
them is ambiguous. Classes are then kept greedily in code-point order (ASCII, then Greek, then
Cyrillic), and a class is dropped when it is ambiguous with an already kept one. Classes with fewer
than ``min_instances`` fonts are dropped first. At 32 px this drops 33 of 209: the 14 Greek capitals
that share Latin shapes (Α Β Ε Ζ Η Ι Κ Μ Ν Ο Ρ Τ Υ Χ), Greek ο, and Cyrillic А В Е М Н О П(=Π) Р С
Т Х а е о р с у х, leaving 176 classes of 16-22 images.
:func:`rankedlist.data.glyph_dropped_classes` returns the list with the measured reason for each.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np


def _describe(cp: int) -> str:
    return f"{chr(cp)!r} (U+{cp:04X} {unicodedata.name(chr(cp), '?')})"


def select_classes(
    rendered: dict[str, Any],
    min_instances: int,
    threshold: float,
    fraction: float,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Kept code points (sorted) and the dropped ones with their measured reasons."""
    cps = rendered["codepoints"]
    fonts = rendered["font_index"]
    ink = rendered["ink"].reshape(len(cps), -1).astype(np.float32) / 255.0
    classes, counts = np.unique(cps, return_counts=True)
    dropped: list[dict[str, Any]] = []
    for cp, n in zip(classes, counts, strict=True):
        if n < min_instances:
            dropped.append(
                {
                    "char": chr(cp),
                    "codepoint": f"U+{cp:04X}",
                    "similar_to": None,
                    "reason": f"rendered by only {n} font(s), fewer than min_instances="
                    f"{min_instances}",
                }
            )
    candidates = classes[counts >= min_instances]
    pos = {int(c): i for i, c in enumerate(candidates)}
    n = len(candidates)
    near = np.zeros((n, n), np.int64)  # fonts in which the pair is near-identical
    common = np.zeros((n, n), np.int64)  # fonts that render both
    for f in np.unique(fonts):
        rows = np.flatnonzero((fonts == f) & np.isin(cps, candidates))
        if len(rows) == 0:
            continue
        idx = np.array([pos[int(c)] for c in cps[rows]], dtype=np.int64)
        x = ink[rows]
        mass = x.sum(axis=1)
        denom = np.maximum(mass[:, None] + mass[None, :], 1e-6)
        common[np.ix_(idx, idx)] += 1
        # Exact L1 for all pairs is slow (22 fonts x 209^2 x 1024); since ink lies in [0, 1],
        # L1 >= squared L2, which BLAS gives fast, so only pairs passing that bound can be near.
        sq = (x * x).sum(axis=1)
        l2sq = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
        a, b = np.nonzero(np.triu(l2sq <= threshold * denom + 1e-3, k=1))
        if len(a):
            l1 = np.abs(x[a] - x[b]).sum(axis=1) / denom[a, b]
            hit = l1 <= threshold
            near[idx[a[hit]], idx[b[hit]]] += 1
            near[idx[b[hit]], idx[a[hit]]] += 1
    ambiguous = (common > 0) & (near >= fraction * common)
    share = near / np.maximum(common, 1)
    kept: list[int] = []
    kept_pos: list[int] = []
    for i, cp in enumerate(candidates):
        clash = [j for j in kept_pos if ambiguous[i, j]]
        if clash:
            j = max(clash, key=lambda j: share[i, j])
            other = int(candidates[j])
            dropped.append(
                {
                    "char": chr(cp),
                    "codepoint": f"U+{cp:04X}",
                    "similar_to": chr(other),
                    "reason": f"{_describe(int(cp))} renders near-identically to "
                    f"{_describe(other)} in {near[i, j]} of the {common[i, j]} fonts that render "
                    f"both (normalised ink L1 <= {threshold})",
                }
            )
        else:
            kept.append(int(cp))
            kept_pos.append(i)
    dropped.sort(key=lambda d: int(d["codepoint"][2:], 16))
    return kept, dropped
