"""The Recall@K picture: the run's fused embedding and heads over the protocol's K, with published
rows beside them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.report.figures import new_figure, save_png, style_axes
from rankedlist.report.published_results import PublishedResult

# The multi-level heads, drawn (and listed in the legend) from the shallowest up.
_HEAD_ORDER = ("low", "mid", "high")


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
    fig = new_figure(max(7.5, 1.0 * len(ks) + 5.0), 4.2)
    ax = fig.subplots()
    style_axes(ax)

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
    return save_png(fig, path)
