"""``write_report``: a run's ``metrics.json``, ``report.md`` and pictures, in its run folder."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist import __version__
from rankedlist.atomic_write import atomic_write_text
from rankedlist.evaluation import PROTOCOLS
from rankedlist.report import markdown as md
from rankedlist.report.embedding_map import plot_embedding_map
from rankedlist.report.published_results import PUBLISHED_UNITS, published_results
from rankedlist.report.recall_at_k_plot import plot_recall_at_k
from rankedlist.report.retrieval_grid import plot_retrieval_grid
from rankedlist.report.training_curves import plot_training_curves

#: Protocol names ``write_report`` accepts: the evaluation's presets.
PROTOCOL_NAMES = tuple(PROTOCOLS)
#: File names inside the run folder, by the key ``write_report`` returns them under.
FILE_NAMES = {
    "metrics": "metrics.json",
    "report": "report.md",
    "training_curves": "training_curves.png",
    "recall_at_k": "recall_at_k.png",
    "embedding_map": "embedding_map.png",
    "retrieval_grid": "retrieval_grid.png",
}
# The paper's datasets: their runs get the published rows beside their own numbers.
_PAPER_DATASETS = ("cub200", "cars196", "sop", "inshop")
_DATASET_TITLES = {
    "glyphs": "Glyphs (embedded)",
    "cub200": "CUB-200-2011",
    "cars196": "Cars196",
    "sop": "Stanford Online Products",
    "inshop": "In-Shop Clothes",
}


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, NaN/inf -> None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # paths, enums, dtypes: their text is what a reader needs


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


def _title(config: Mapping[str, Any], dataset_name: str | None, protocol: str) -> str:
    model = config.get("model", {}) if isinstance(config.get("model"), Mapping) else {}
    loss = config.get("loss", {}) if isinstance(config.get("loss"), Mapping) else {}
    data_title = _DATASET_TITLES.get(dataset_name or "", dataset_name or protocol)
    model_name = model.get("name", "unknown model")
    loss_name = str(loss.get("name", "unknown loss"))
    if model.get("multi_level"):
        loss_name += " (multi-level L,M,H)"
    return f"{data_title} · {model_name} · {loss_name}"


def _our_label(config: Mapping[str, Any]) -> str:
    model = config.get("model", {}) if isinstance(config.get("model"), Mapping) else {}
    loss = config.get("loss", {}) if isinstance(config.get("loss"), Mapping) else {}
    name = str(loss.get("name", "this run"))
    if str(name).lower() in ("rll", "ranked_list", "rankedlist", "ranked_list_loss"):
        name = "RLL-(L,M,H)" if model.get("multi_level") else "RLL-H"
    return f"This run: {name}" + (f", {model['name']}" if "name" in model else "")


def _plotted_rows(rows: Sequence[Any]) -> list[Any]:
    """Published rows worth a line on the Recall@K plot: the paper's RLL rows, else any RLL or
    reference row (the table lists them all; the plot stays readable)."""
    paper = [r for r in rows if r.kind == "paper" and r.method in ("RLL-H", "RLL-(L,M,H)")]
    return paper or [r for r in rows if r.method.startswith("RLL") or r.kind == "reference"]


def _metric_notes(fused: Mapping[str, Any]) -> list[str]:
    notes = []
    lone = fused.get("lone_queries")
    if isinstance(lone, int | float | np.number) and lone:
        notes.append(
            f"{int(lone)} test queries have no same-class item in the gallery; they are left out "
            "of the retrieval metrics (nothing relevant to rank) and only counted."
        )
    # Counts (num_queries, num_gallery, lone_queries) are said in words elsewhere.
    shown = {"r_precision", "map@r", "nmi", "lone_queries"}
    extra = [
        f"`{k}` = {float(v):.4g}" if isinstance(v, float | np.floating) else f"`{k}` = {v}"
        for k, v in sorted(fused.items())
        if k not in shown and not k.startswith(("recall@", "num_"))
    ]
    if extra:
        notes.append("Other metrics: " + ", ".join(extra) + ".")
    return notes


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
        The written files by key (``metrics``, ``report``, and those of the pictures drawn:
        ``training_curves``, ``recall_at_k``, ``embedding_map``, ``retrieval_grid``).

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

    data_cfg = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    dataset_name = data_cfg.get("dataset")
    dataset_name = str(dataset_name).lower() if dataset_name is not None else protocol
    rows = published_results(dataset_name)
    literature = [r for r in rows if r.kind != "reference"]
    reference = [r for r in rows if r.kind == "reference"]
    fused = test_metrics["fused"]
    heads = {k: v for k, v in test_metrics.items() if k != "fused"}
    ks = md.recall_ks([k for m in test_metrics.values() for k in m], list(PROTOCOLS[protocol].ks))

    written: dict[str, Path] = {}
    metrics_doc = {
        "test": fused,
        "heads": heads,
        "protocol": protocol,
        "dataset": dataset_name,
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
    path = run_dir / FILE_NAMES["metrics"]
    atomic_write_text(path, json.dumps(_jsonable(metrics_doc), indent=2, allow_nan=False) + "\n")
    written["metrics"] = path

    # Pictures. Each returns None when it has nothing to draw; the report says why.
    pictures: dict[str, Path | None] = {
        "training_curves": plot_training_curves(history, run_dir / FILE_NAMES["training_curves"]),
        "recall_at_k": plot_recall_at_k(
            test_metrics,
            ks,
            run_dir / FILE_NAMES["recall_at_k"],
            published=_plotted_rows(rows),
        ),
        "embedding_map": plot_embedding_map(
            embeddings,
            labels,
            run_dir / FILE_NAMES["embedding_map"],
            class_names=getattr(dataset, "classes", None),
        ),
        "retrieval_grid": None
        if dataset is None
        else plot_retrieval_grid(
            embeddings,
            labels,
            dataset,
            run_dir / FILE_NAMES["retrieval_grid"],
            query_count=query_count,
        ),
    }
    written.update({k: p for k, p in pictures.items() if p is not None})

    text = _report_markdown(
        config,
        history,
        test_metrics,
        protocol,
        dataset_name,
        ks,
        literature,
        reference,
        pictures,
        dataset is None,
        query_count,
        len(embeddings),
    )
    path = run_dir / FILE_NAMES["report"]
    atomic_write_text(path, text)
    written["report"] = path
    return written


def _report_markdown(
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    test_metrics: Mapping[str, Mapping[str, Any]],
    protocol: str,
    dataset_name: str,
    ks: Sequence[int],
    literature: Sequence[Any],
    reference: Sequence[Any],
    pictures: Mapping[str, Path | None],
    no_dataset: bool,
    query_count: int | None,
    n: int,
) -> str:
    fused = test_metrics["fused"]
    out = [f"# {_title(config, dataset_name, protocol)}", ""]
    if isinstance(config.get("description"), str) and config["description"].strip():
        out += [f"*{config['description'].strip()}*", ""]
    split = (
        f"{query_count} queries searched against a gallery of {n - query_count} images"
        if query_count is not None
        else f"{n} images, each query searched against all the others (itself excluded)"
    )
    out += [
        f"Test split, evaluated once at the end of training with the `{protocol}` protocol: "
        f"{split}. All numbers are percentages.",
        "",
        "## Results",
        "",
        md.results_table(fused, _our_label(config), [*literature, *reference], ks),
        "",
    ]
    if dataset_name in _PAPER_DATASETS and literature:
        out += [
            "Published rows are the numbers their sources print (`–`: not reported); the sources "
            "are listed below (every row with its provenance: "
            "`rankedlist.report.published_results`). The Ranked List Loss paper's (CVPR 2019) RLL "
            "numbers use BN-Inception; the authors picked their reported checkpoints "
            "by test-set accuracy (as Proxy-Anchor, MS loss and XBM also do), which favours them: "
            "this toolkit selects on a validation split or takes the final iteration, and reports "
            "the test split once.",
            "",
            "Sources:",
            "",
            *md.sources_list(literature),
            "",
        ]
    elif reference:
        out += [
            "The reference rows are not published results: they were measured with this package "
            "on the same embedded glyph test classes (raw pixels: no training at all), as listed "
            "below.",
            "",
            "Sources:",
            "",
            *md.sources_list(reference),
            "",
        ]
    else:
        out += ["No published numbers exist for this dataset; only this run's are shown.", ""]
    out += [f"- {note}" for note in _metric_notes(fused)]
    if _metric_notes(fused):
        out.append("")

    if len(test_metrics) > 1:
        out += [
            "## Per head",
            "",
            "Each embedding head on its own, and the fused test-time embedding (the raw head "
            "outputs concatenated, then L2-normalised).",
            "",
            md.heads_table(test_metrics, ks),
            "",
        ]

    out += ["## Pictures", ""]
    captions = {
        "training_curves": (
            "Training curves",
            "Training curves",
            "no training records were logged",
        ),
        "recall_at_k": ("Recall@K", "Recall@K", "the metrics hold no Recall@K"),
        "embedding_map": (
            "2-D map of the test embeddings",
            "Embedding map",
            "fewer than two test embeddings",
        ),
        "retrieval_grid": ("Retrieval examples", "Retrieval grid", "no query had a neighbour"),
    }
    for key, (heading, alt, why_not) in captions.items():
        out += [f"### {heading}", ""]
        path = pictures.get(key)
        if path is not None:
            out += [f"![{alt}]({FILE_NAMES[key]})", ""]
        elif key == "retrieval_grid" and no_dataset:
            out += ["Not drawn: no test dataset was given to load the images from.", ""]
        else:
            out += [f"Not drawn: {why_not}.", ""]
        if key == "embedding_map" and path is not None:
            out += [
                "t-SNE (PCA initialisation, fixed seed) of a seeded subsample: at most 20 test "
                "classes and 1,500 points. Distances on such a map are only roughly faithful.",
                "",
            ]
        if key == "retrieval_grid" and path is not None:
            out += [
                "Seeded random queries (left) and their nearest "
                + ("gallery images" if query_count is not None else "test images, self excluded")
                + ": green border = same class, red = another class.",
                "",
            ]

    steps = [r.get("step") for r in history if isinstance(r.get("step"), int | float)]
    out += ["## Configuration", ""]
    if steps:
        out += [f"Logged {len(history)} records up to iteration {int(max(steps))}.", ""]
    summary = md.config_summary_rows(config)
    if summary:
        out += [
            md.markdown_table(
                ["setting", "value"], [[f"`{k}`", v] for k, v in summary], align=["l", "l"]
            ),
            "",
        ]
    import yaml

    full = yaml.safe_dump(_jsonable(config), sort_keys=False, allow_unicode=True).rstrip()
    out += [
        "<details><summary>Full resolved config</summary>",
        "",
        "```yaml",
        full,
        "```",
        "",
        "</details>",
        "",
        "Files: `metrics.json` (test metrics as fractions, the published and reference rows in "
        "percent with their sources, the config) and the PNG pictures next to this report.",
        "",
    ]
    return "\n".join(out)
