"""The comparison's pictures: every seed and the 95% interval per loss, and the best trials' curves.

``comparison.png``: one panel per headline metric (R@1, MAP@R, NMI when present, and the plan's
metric), each loss a group on the x axis, tuned beside untuned; every seed is a dot and the mean
carries its 95% interval as an error bar (a single seed: the mean alone). ``validation_curves.png``:
the validation objective of each loss's best trial against the iteration, one line per loss (how
fast each loss learns, not only where it ends). Both draw through :mod:`rankedlist.report.figures`
(Agg, no pyplot, atomic PNG writes) and return ``None`` when there is nothing to draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rankedlist.compare.statistics import VARIANTS, metric_keys, metric_name, summary_of
from rankedlist.report.figures import new_figure, save_png, shorten, style_axes

__all__ = [
    "CURVES_SIZE",
    "comparison_metrics",
    "comparison_size",
    "plot_comparison",
    "plot_validation_curves",
]

#: Size of ``validation_curves.png`` in inches (704 x 396 pixels at the report's 110 dpi).
CURVES_SIZE = (6.4, 3.6)
_COLORS = {"tuned": "#1f77b4", "untuned": "#999999"}
_OFFSET = {"tuned": -0.2, "untuned": 0.2}
_LINE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def comparison_metrics(results: Mapping[str, Any]) -> list[str]:
    """The panels of ``comparison.png``: R@1, MAP@R and NMI when some run has them, then the
    plan's metric if it is none of those."""
    keys = metric_keys(results)
    panels = [k for k in ("recall@1", "map@r", "nmi") if k in keys]
    primary = results["plan"].get("metric") or "map@r"
    return panels + ([primary] if primary in keys and primary not in panels else [])


def comparison_size(n_losses: int, n_metrics: int) -> tuple[float, float]:
    """``comparison.png`` in inches: ``(1.5 + 1.25 · losses) · metrics`` wide, 4 high (quarter
    inches, so the pixel size at 110 dpi is exact)."""
    return ((1.5 + 1.25 * max(1, n_losses)) * n_metrics, 4.0)


def _spread(n: int, width: float = 0.24) -> list[float]:
    """Horizontal offsets of ``n`` seed dots, evenly across ``width`` (no random jitter)."""
    if n < 2:
        return [0.0] * n
    return [-width / 2 + width * i / (n - 1) for i in range(n)]


def _panel(ax: Any, losses: Sequence[Mapping[str, Any]], metric: str) -> None:
    style_axes(ax)
    for i, loss in enumerate(losses):
        for variant in VARIANTS:
            summary = summary_of(loss, variant, metric)
            if summary is None:
                continue
            x = i + _OFFSET[variant]
            color = _COLORS[variant]
            xs = [x + d for d in _spread(summary.n)]
            if summary.has_interval:
                err = [[summary.mean - summary.low], [summary.high - summary.mean]]
                ax.errorbar(
                    [x], [summary.mean], yerr=err, fmt="none", ecolor=color, capsize=5, lw=1.4
                )
            ax.plot([x - 0.1, x + 0.1], [summary.mean] * 2, color=color, lw=2.2, zorder=3)
            ax.scatter(xs, summary.values, s=16, color=color, alpha=0.8, zorder=4, linewidths=0)
    ax.set_xticks(range(len(losses)))
    rotate = len(losses) > 3
    ax.set_xticklabels(
        [shorten(str(loss["label"]), 18) for loss in losses],
        rotation=30 if rotate else 0,
        ha="right" if rotate else "center",
        fontsize=9,
    )
    ax.set_xlim(-0.6, len(losses) - 0.4)
    ax.set_title(metric_name(metric), fontsize=11)
    ax.set_ylabel(f"test {metric_name(metric)} (%)")


def plot_comparison(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Write ``comparison.png`` (see the module docstring); ``None`` when no run has finished."""
    metrics = comparison_metrics(results)
    if not metrics:
        return None
    losses = list(results["losses"].values())
    fig = new_figure(*comparison_size(len(losses), len(metrics)))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        _panel(ax, losses, metric)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=_COLORS[v], marker="o", lw=2.2, markersize=4, label=v)
        for v in VARIANTS
    ]
    fig.legend(handles=handles, loc="upper right", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(
        "Test metrics: each seed (dots), the mean (bar) and its 95% t-interval", fontsize=11
    )
    return save_png(fig, path)


def _best_curve(loss: Mapping[str, Any]) -> tuple[int, list[float], list[float]] | None:
    best = loss.get("best")
    if best is None:
        return None
    for trial in loss["trials"]:
        if trial["number"] == best["trial"] and trial.get("curve"):
            points = sorted((float(it), float(v)) for it, v in trial["curve"])
            return trial["number"], [p[0] for p in points], [100.0 * p[1] for p in points]
    return None


def plot_validation_curves(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Write ``validation_curves.png``: the best trial's validation curve of each loss, one line
    each; ``None`` when no loss has a best trial with a curve."""
    curves = []
    for loss in results["losses"].values():
        curve = _best_curve(loss)
        if curve is not None:
            curves.append((loss["label"], *curve))
    if not curves:
        return None
    metric = metric_name(results["plan"].get("metric") or "map@r")
    fig = new_figure(*CURVES_SIZE)
    ax = fig.add_subplot()
    style_axes(ax)
    for i, (label, number, steps, values) in enumerate(curves):
        ax.plot(
            steps,
            values,
            color=_LINE_COLORS[i % len(_LINE_COLORS)],
            lw=1.8,
            marker="o" if len(steps) <= 12 else None,
            markersize=3.5,
            label=f"{label} (trial {number})",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"validation {metric} (%)")
    ax.set_title("Best trial of each loss: validation during training", fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return save_png(fig, path)
