"""Markdown pieces of ``report.md``: number formatting, the results tables and the config summary.

Our metrics arrive as fractions (0-1, the evaluation's convention); published numbers are percents
(:data:`rankedlist.report.published_results.PUBLISHED_UNITS`). Every table prints percents with one
decimal, the way the papers do, so the two sit side by side without conversion in the reader's head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rankedlist.report.published_results import PublishedResult

#: Placeholder for a number a source does not give.
MISSING = "–"

# Retrieval/clustering metrics shown in the tables after the Recall@K columns, in this order.
_OTHER_COLUMNS = (("r_precision", "R-Prec."), ("map@r", "MAP@R"), ("nmi", "NMI"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def format_fraction_as_percent(value: Any) -> str:
    """``0.6134 -> "61.3"``; ``None``, NaN or a non-number -> :data:`MISSING`."""
    if not _is_number(value):
        return MISSING
    return f"{100.0 * float(value):.1f}"


def format_percent(value: Any) -> str:
    """A value already in percent: ``61.3 -> "61.3"``; missing -> :data:`MISSING`."""
    if not _is_number(value):
        return MISSING
    return f"{float(value):.1f}"


def recall_ks(keys: Iterable[str], protocol_ks: Iterable[int] = ()) -> list[int]:
    """The sorted Ks of the ``recall@K`` keys present, united with the protocol's own Ks."""
    ks = {int(k) for k in protocol_ks}
    for key in keys:
        if key.startswith("recall@") and key[len("recall@") :].isdigit():
            ks.add(int(key[len("recall@") :]))
    return sorted(ks)


def metric_columns(ks: Sequence[int], keys: Iterable[str]) -> list[tuple[str, str]]:
    """``(metric key, column header)`` pairs: Recall@K for every K, then the other metrics present.

    Args:
        ks: the Recall@K values of K to show (a column each, even if a row lacks it).
        keys: every metric key available in any row; R-Precision, MAP@R and NMI get a column only
            when some row has them.
    """
    keys = set(keys)
    columns = [(f"recall@{k}", f"R@{k}") for k in ks]
    columns += [(key, header) for key, header in _OTHER_COLUMNS if key in keys]
    return columns


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    """A GitHub-flavoured markdown table. ``align`` holds ``"l"`` or ``"r"`` per column."""
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries for {len(headers)} columns")
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns: {row!r}")

    def cell(text: str) -> str:
        # A pipe would split the cell; escape it.
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(
    ours: Mapping[str, Any],
    ours_label: str,
    published: Sequence[PublishedResult],
    ks: Sequence[int],
) -> str:
    """Our fused metrics (fractions) beside published rows (percents), all printed in percent.

    The last column names each row's source in short (:attr:`PublishedResult.short_source`);
    :func:`sources_list` gives the full citations.
    """
    keys = set(ours)
    for row in published:
        keys.update(row.metrics)
    columns = metric_columns(ks, keys)
    headers = ["method", *[h for _, h in columns], "source"]
    rows = [
        [
            f"**{ours_label}**",
            *[f"**{format_fraction_as_percent(ours.get(k))}**" for k, _ in columns],
            "this run",
        ]
    ]
    for row in published:
        label = row.method + (f" ({row.note})" if row.note and row.kind != "reference" else "")
        cells = [format_percent(row.metrics.get(k)) for k, _ in columns]
        rows.append([label, *cells, row.short_source or row.source])
    align = ["l"] + ["r"] * len(columns) + ["l"]
    return markdown_table(headers, rows, align)


def sources_list(published: Sequence[PublishedResult]) -> list[str]:
    """Markdown bullets ``- **short source**: full source``, one per distinct source, in order."""
    seen: dict[str, str] = {}
    for row in published:
        seen.setdefault(row.source, row.short_source or row.source)
    return [
        f"- **{short}**: {full}" if short != full else f"- {full}" for full, short in seen.items()
    ]


def heads_table(test_metrics: Mapping[str, Mapping[str, Any]], ks: Sequence[int]) -> str:
    """One row per embedding head (low, mid, high, then the fused embedding), in percent."""
    order = ["low", "mid", "high"]
    names = [n for n in order if n in test_metrics]
    names += sorted(n for n in test_metrics if n not in order and n != "fused")
    names += ["fused"] if "fused" in test_metrics else []
    keys: set[str] = set()
    for name in names:
        keys.update(test_metrics[name])
    columns = metric_columns(ks, keys)
    rows = [
        [name, *[format_fraction_as_percent(test_metrics[name].get(k)) for k, _ in columns]]
        for name in names
    ]
    return markdown_table(["head", *[h for _, h in columns]], rows)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists and other leaves are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=name + "."))
        else:
            flat[name] = value
    return flat


# The settings that say what was trained and how, as dotted-key patterns in the order shown (the
# trainer's config schema: data, model, loss, optim, schedule, train). A config with other section
# names falls back to every scalar of the sections in _KEY_SECTIONS. The full config always follows
# in a collapsed block, so nothing is hidden.
_KEY_SETTINGS = (
    "data.dataset", "data.p", "data.k", "data.image_size", "data.val_fraction", "data.options.*",
    "model.name", "model.embedding_dim", "model.pretrained", "model.pooling", "model.freeze_bn",
    "model.multi_level", "model.options.*",
    "loss.name", "loss.params.*",
    "optim.name", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.lr_multiplier",
    "optim.clip_grad_norm",
    "schedule.name", "schedule.milestones", "schedule.gamma", "schedule.warmup_iters",
    "train.iterations", "train.amp", "train.seed", "train.eval_every", "train.select_metric",
)  # fmt: skip
_KEY_SECTIONS = (
    "data", "model", "loss", "sampler", "optimizer", "optim", "scheduler", "schedule", "train",
    "training",
)  # fmt: skip
# Entries that are noise in a summary (paths are machine-specific; the full block keeps them).
_SKIP_SUFFIXES = ("root", "path", "dir", "output", "workers", "log_every")


def _setting_text(value: Any) -> str | None:
    """A short text for a scalar or a short flat list; ``None`` for what a table cannot show."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if not value or len(value) > 8 or any(isinstance(v, Mapping | list | tuple) for v in value):
            return None
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, str | int | float | bool):
        text = str(value)
    else:
        return None
    return text if len(text) <= 60 else text[:57] + "..."


def config_summary_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(dotted key, value)`` rows for the key settings of a resolved config."""
    import fnmatch

    flat = flatten_config(config)
    optimizer = str(flat.get("optim.name", flat.get("optimizer.name", ""))).lower()
    rows: list[tuple[str, str]] = []
    for pattern in _KEY_SETTINGS:
        for key in [k for k in flat if fnmatch.fnmatchcase(k, pattern)]:
            if key == "optim.momentum" and optimizer != "sgd":
                continue  # only SGD uses it
            text = _setting_text(flat[key])
            if text is not None:
                rows.append((key, text))
    if len(rows) >= 3:
        return rows
    # Another schema: every scalar of the known sections, sections in order, config order inside.
    rows = []
    for section in _KEY_SECTIONS:
        for key, value in flat.items():
            if key.split(".", 1)[0] != section or key.rsplit(".", 1)[-1].endswith(_SKIP_SUFFIXES):
                continue
            text = _setting_text(value)
            if text is not None:
                rows.append((key, text))
    return rows
