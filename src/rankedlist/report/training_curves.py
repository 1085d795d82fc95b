"""The training-curves picture: loss, active pairs, learning rate, throughput and validation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.report.figures import new_figure, save_png, style_axes


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
    fig = new_figure(width, height, layout=None)
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
        style_axes(ax)
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
    return save_png(fig, path)
