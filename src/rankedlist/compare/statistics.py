"""The numbers of a comparison: per-seed values, mean ± std, the Student-t interval of the mean.

Test metrics arrive as fractions (0-1) keyed by seed; everything here works in **percent** (what
the tables, sentences and pictures print). The standard deviation is the sample one (``n - 1``);
the 95% interval of the mean is ``mean ± t(0.975, n - 1) · std / √n``, none for a single seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONFIDENCE",
    "Summary",
    "VARIANTS",
    "intervals_overlap",
    "metric_keys",
    "metric_name",
    "missing_seeds",
    "seed_values",
    "sorted_seeds",
    "summarize",
    "summary_of",
]

#: The confidence level of every interval.
CONFIDENCE = 0.95
#: The two runs of each loss: its best searched configuration and its recipe as shipped.
VARIANTS = ("tuned", "untuned")

_NAMES = {"r_precision": "R-Precision", "map@r": "MAP@R", "nmi": "NMI"}
_ORDER = ("r_precision", "map@r", "nmi")
# Counts, not ratios: never on a percent axis or in a percent table.
_COUNTS = ("lone_queries",)


@dataclass(frozen=True)
class Summary:
    """Mean, sample std and 95% t-interval of the mean of ``values`` (percent)."""

    values: tuple[float, ...]
    mean: float
    std: float
    low: float | None  # None with fewer than 2 values: no interval
    high: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


def summarize(values: Iterable[float]) -> Summary | None:
    """:class:`Summary` of ``values``; ``None`` when there are none."""
    vals = tuple(float(v) for v in values)
    if not vals:
        return None
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return Summary(vals, mean, 0.0, None, None)
    from scipy.stats import t

    std = statistics.stdev(vals)
    half = float(t.ppf(0.5 + CONFIDENCE / 2, len(vals) - 1)) * std / math.sqrt(len(vals))
    return Summary(vals, mean, std, mean - half, mean + half)


def intervals_overlap(a: Summary, b: Summary) -> bool | None:
    """Whether the two 95% intervals share a point; ``None`` when either has no interval."""
    if not (a.has_interval and b.has_interval):
        return None
    return a.low <= b.high and b.low <= a.high


def sorted_seeds(runs: Mapping[Any, Any]) -> list[Any]:
    """The seed keys of ``runs`` (JSON makes them strings), numbers in numeric order."""

    def order(key: Any) -> tuple[int, float, str]:
        try:
            return (0, float(key), str(key))
        except (TypeError, ValueError):
            return (1, 0.0, str(key))

    return sorted(runs, key=order)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def seed_values(runs: Mapping[Any, Mapping[str, Any]], metric: str) -> list[float]:
    """``metric`` of every finished seed in ``runs``, in percent, seeds in order (a seed without a
    finite value for it is left out)."""
    values = []
    for seed in sorted_seeds(runs):
        value = runs[seed].get(metric)
        if _is_finite_number(value):
            values.append(100.0 * float(value))
    return values


def summary_of(loss: Mapping[str, Any], variant: str, metric: str) -> Summary | None:
    """The :class:`Summary` of one loss's ``variant`` (``tuned`` / ``untuned``) on ``metric``."""
    return summarize(seed_values(loss.get(variant) or {}, metric))


def metric_keys(results: Mapping[str, Any]) -> list[str]:
    """Every ratio metric in any run: Recall@K by K, R-Precision, MAP@R, NMI, then the rest by name
    (counts such as ``lone_queries`` or ``num_*`` are not metrics to average in percent)."""
    keys: set[str] = set()
    for loss in results["losses"].values():
        for variant in VARIANTS:
            for metrics in (loss.get(variant) or {}).values():
                keys.update(k for k, v in metrics.items() if _is_finite_number(v))
    keys = {k for k in keys if k not in _COUNTS and not k.startswith("num_")}
    recall = sorted(
        (k for k in keys if k.startswith("recall@") and k[7:].isdigit()), key=lambda k: int(k[7:])
    )
    known = [k for k in _ORDER if k in keys]
    rest = sorted(keys - set(recall) - set(known))
    return recall + known + rest


def metric_name(key: str) -> str:
    """The printed name of a metric key: ``recall@1 -> R@1``, ``map@r -> MAP@R``."""
    if key.startswith("recall@") and key[7:].isdigit():
        return f"R@{key[7:]}"
    return _NAMES.get(key, key)


def missing_seeds(results: Mapping[str, Any], recipe: str, variant: str) -> list[Any]:
    """The plan's seeds that ``recipe``'s ``variant`` has not finished yet."""
    done = {str(s) for s in (results["losses"][recipe].get(variant) or {})}
    return [s for s in results["plan"]["seeds"] if str(s) not in done]
