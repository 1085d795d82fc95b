"""``write_report``: a run's ``metrics.json``, ``report.md``, ``report.html`` and pictures, in
its run folder."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist import __version__
from rankedlist.atomic_write import atomic_write_text
from rankedlist.evaluation import PROTOCOLS
from rankedlist.report import markdown as md
from rankedlist.report.embedding_map import map_layout, plot_embedding_map
from rankedlist.report.html_page import write_html_report
from rankedlist.report.markdown_report import PICTURE_FILES, MarkdownInputs, report_markdown
from rankedlist.report.published_results import PUBLISHED_UNITS, published_results
from rankedlist.report.recall_at_k_plot import plot_recall_at_k
from rankedlist.report.retrieval_grid import plot_retrieval_grid
from rankedlist.report.run_summary import dataset_name, jsonable, plotted_rows
from rankedlist.report.training_curves import plot_training_curves

#: Protocol names ``write_report`` accepts: the evaluation's presets.
PROTOCOL_NAMES = tuple(PROTOCOLS)
#: File names inside the run folder, by the key ``write_report`` returns them under.
FILE_NAMES = {
    "metrics": "metrics.json",
    "report": "report.md",
    "html": "report.html",
    **PICTURE_FILES,
}


def _validate(
    run_dir: Path,
    config: Any,
    history: Any,
    test_metrics: Any,
    protocol: Any,
    embeddings: np.ndarray,
    labels: np.ndarray,
    dataset: Any,
    query_count: Any,
) -> None:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir {str(run_dir)!r} does not exist: create the run folder")
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be the resolved config as a dict, got {type(config).__name__}"
        )
    if not isinstance(history, Sequence) or isinstance(history, str):
        raise TypeError(f"history must be a list of dict records, got {type(history).__name__}")
    if any(not isinstance(r, Mapping) for r in history):
        raise TypeError("history must be a list of dict records (each with 'step' and metrics)")
    if not isinstance(test_metrics, Mapping) or not isinstance(test_metrics.get("fused"), Mapping):
        raise ValueError(
            "test_metrics must be {'fused': {metric: value, ...}, optionally 'high', 'mid', 'low'}"
            f"; got keys {sorted(test_metrics) if isinstance(test_metrics, Mapping) else None}"
        )
    bad = [k for k, v in test_metrics.items() if not isinstance(v, Mapping)]
    if bad:
        raise ValueError(f"test_metrics entries {bad} must be dicts of metric -> value")
    if protocol not in PROTOCOL_NAMES:
        raise ValueError(f"protocol must be one of {list(PROTOCOL_NAMES)}, got {protocol!r}")
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shape {embeddings.shape}")
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise ValueError(
            f"labels must be 1-D with one label per embedding row: labels {labels.shape}, "
            f"embeddings {embeddings.shape}"
        )
    if query_count is not None and (
        isinstance(query_count, bool)
        or not isinstance(query_count, int | np.integer)
        or not 0 < query_count < len(embeddings)
    ):
        raise ValueError(
            f"query_count must be None or an int in [1, {len(embeddings) - 1}] (the first "
            f"query_count rows are queries, the rest the gallery), got {query_count!r}"
        )
    if dataset is not None:
        if not callable(getattr(dataset, "load_image", None)):
            raise TypeError("dataset must have load_image(i) -> PIL image (or pass dataset=None)")
        if hasattr(dataset, "__len__") and len(dataset) != len(embeddings):
            raise ValueError(
                f"dataset has {len(dataset)} items but embeddings has {len(embeddings)} rows: "
                "pass the test dataset whose item i is embedding row i (for inshop: the queries "
                "then the gallery), or dataset=None to skip the retrieval grid"
            )


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    config: dict,
    history: list[dict],
    test_metrics: dict[str, dict],
    protocol: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    dataset: Any = None,
    query_count: int | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and the pictures of a finished run into ``run_dir``.

    Args:
        run_dir: the run folder (must exist).
        config: the fully resolved config as a plain dict (``config["data"]["dataset"]``,
            ``config["model"]["name"]``, ``config["loss"]["name"]``, ...).
        history: the logged records, each with ``"step"`` and any of ``loss``, ``lr``,
            ``active_pos``, ``active_neg``, ``nonzero_frac``, ``images_per_s`` and ``val/...``.
        test_metrics: ``{"fused": {...}}`` plus optional per-head entries (``"low"``, ``"mid"``,
            ``"high"``), each a flat dict of the evaluation's metrics as fractions in [0, 1].
        protocol: ``"glyphs"``, ``"cub200"``, ``"cars196"``, ``"sop"``, ``"inshop"`` or
            ``"default"``.
        embeddings: the fused test embeddings, ``N x D``, L2-normalised.
        labels: their ``N`` labels.
        dataset: the test dataset (item ``i`` is row ``i``; ``load_image(i)`` and ``classes``), or
            ``None`` to skip the retrieval grid.
        query_count: ``None`` (the gallery is the query set, self excluded) or, for In-Shop, the
            number of leading rows that are queries; the remaining rows are the gallery.

    Returns:
        The written files by key (``metrics``, ``report``, ``html``, and those of the pictures
        drawn: ``training_curves``, ``recall_at_k``, ``embedding_map``, ``retrieval_grid``).

    ``metrics.json`` holds ``test`` (the fused metrics, fractions), ``heads`` (the other entries of
    ``test_metrics``), ``protocol``, ``config``, ``published`` (the literature's rows for the
    dataset, values in percent) and ``reference`` (baselines measured with this package, such as
    raw pixels on the glyphs, percent), with ``units`` saying so; every published or reference row
    has its ``source`` (the publication and table, the released code, or how it was measured).
    Non-finite numbers are written as ``null``.
    """
    run_dir = Path(run_dir)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    _validate(
        run_dir, config, history, test_metrics, protocol, embeddings, labels, dataset, query_count
    )
    query_count = None if query_count is None else int(query_count)

    name = dataset_name(config, protocol)
    rows = published_results(name)
    literature = [r for r in rows if r.kind != "reference"]
    reference = [r for r in rows if r.kind == "reference"]
    ks = md.recall_ks([k for m in test_metrics.values() for k in m], list(PROTOCOLS[protocol].ks))
    written = {"metrics": _write_metrics(run_dir / FILE_NAMES["metrics"], config, test_metrics,
                                         protocol, name, literature, reference)}  # fmt: skip

    # Pictures. Each returns None when it has nothing to draw; the report says why.
    layout = map_layout(embeddings, labels)  # one layout for the PNG and the page
    pictures: dict[str, Path | None] = {
        "training_curves": plot_training_curves(history, run_dir / FILE_NAMES["training_curves"]),
        "recall_at_k": plot_recall_at_k(
            test_metrics, ks, run_dir / FILE_NAMES["recall_at_k"], published=plotted_rows(rows)
        ),
        "embedding_map": plot_embedding_map(
            embeddings,
            labels,
            run_dir / FILE_NAMES["embedding_map"],
            class_names=getattr(dataset, "classes", None),
            layout=layout,
        ),
        "retrieval_grid": None
        if dataset is None
        else plot_retrieval_grid(
            embeddings,
            labels,
            dataset,
            run_dir / FILE_NAMES["retrieval_grid"],
            query_count=query_count,
        ),  # fmt: skip
    }
    written.update({k: p for k, p in pictures.items() if p is not None})
    inputs = MarkdownInputs(
        config=config, history=history, test_metrics=test_metrics, protocol=protocol,
        dataset=name, ks=ks, literature=literature, reference=reference, pictures=pictures,
        no_dataset=dataset is None, query_count=query_count, num_images=len(embeddings),
    )  # fmt: skip
    written["report"] = atomic_write_text(run_dir / FILE_NAMES["report"], report_markdown(inputs))
    if len(embeddings) < 2:  # nothing to search: no page of mistakes
        return written
    written["html"] = write_html_report(
        run_dir / FILE_NAMES["html"], config=config, history=history, test_metrics=test_metrics,
        protocol=protocol, embeddings=embeddings, labels=labels, dataset=dataset,
        query_count=query_count, curves_png=pictures["training_curves"], layout=layout,
    )  # fmt: skip
    return written


def _write_metrics(
    path: Path,
    config: Mapping[str, Any],
    test_metrics: Mapping[str, Mapping[str, Any]],
    protocol: str,
    name: str,
    literature: Sequence[Any],
    reference: Sequence[Any],
) -> Path:
    """``metrics.json``: the fused and per-head metrics, the config, the published rows."""
    metrics_doc = {
        "test": test_metrics["fused"],
        "heads": {k: v for k, v in test_metrics.items() if k != "fused"},
        "protocol": protocol,
        "dataset": name,
        "units": {
            "test": "fraction",
            "heads": "fraction",
            "published": PUBLISHED_UNITS,
            "reference": PUBLISHED_UNITS,
        },
        "config": config,
        "published": [r.to_dict() for r in literature],
        "reference": [r.to_dict() for r in reference],
        "rankedlist_version": __version__,  # the code that made these numbers
    }
    text = json.dumps(jsonable(metrics_doc), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)
