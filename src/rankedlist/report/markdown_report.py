"""``report.md``: the run's results beside the published rows, per head, pictures, config.

GitHub renders it; ``report.html`` (:mod:`rankedlist.report.html_page`) is built from the same
numbers, title and subtitle (:mod:`rankedlist.report.run_summary`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.report import markdown as md
from rankedlist.report.run_summary import (
    PAPER_DATASETS,
    config_without_description,
    jsonable,
    our_label,
    run_subtitle,
    run_title,
)

#: Picture file names by key (the run folder's PNGs).
PICTURE_FILES = {
    "training_curves": "training_curves.png",
    "recall_at_k": "recall_at_k.png",
    "embedding_map": "embedding_map.png",
    "retrieval_grid": "retrieval_grid.png",
}
# heading, alt text, why it was not drawn
_CAPTIONS = {
    "training_curves": ("Training curves", "Training curves", "no training records were logged"),
    "recall_at_k": ("Recall@K", "Recall@K", "the metrics hold no Recall@K"),
    "embedding_map": (
        "2-D map of the test embeddings",
        "Embedding map",
        "fewer than two test embeddings",
    ),
    "retrieval_grid": ("Retrieval examples", "Retrieval grid", "no query had a neighbour"),
}


@dataclass(frozen=True)
class MarkdownInputs:
    """Everything ``report.md`` says, gathered by ``write_report``."""

    config: Mapping[str, Any]
    history: Sequence[Mapping[str, Any]]
    test_metrics: Mapping[str, Mapping[str, Any]]
    protocol: str
    dataset: str
    ks: Sequence[int]
    literature: Sequence[Any]
    reference: Sequence[Any]
    pictures: Mapping[str, Path | None]
    no_dataset: bool
    query_count: int | None
    num_images: int


def metric_notes(fused: Mapping[str, Any]) -> list[str]:
    """Sentences on lone queries and on the metrics the tables do not show."""
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


def report_markdown(inputs: MarkdownInputs) -> str:
    """The text of ``report.md``."""
    return "\n".join(
        [*_results(inputs), *_heads(inputs), *_pictures(inputs), *_configuration(inputs)]
    )


def _results(inputs: MarkdownInputs) -> list[str]:
    config, fused = inputs.config, inputs.test_metrics["fused"]
    n, q = inputs.num_images, inputs.query_count
    split = (
        f"{q} queries searched against a gallery of {n - q} images"
        if q is not None
        else f"{n} images, each query searched against all the others (itself excluded)"
    )
    out = [
        f"# {run_title(config, inputs.dataset, inputs.protocol)}",
        "",
        f"*{run_subtitle(config, inputs.dataset, n, q)}*",
        "",
        f"Test split, evaluated once at the end of training with the `{inputs.protocol}` "
        f"protocol: {split}. All numbers are percentages. `report.html` beside this file shows "
        "the hardest queries, the most confused classes and per-class results.",
        "",
        "## Results",
        "",
        md.results_table(
            fused, our_label(config), [*inputs.literature, *inputs.reference], inputs.ks
        ),
        "",
    ]
    if inputs.dataset in PAPER_DATASETS and inputs.literature:
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
            *md.sources_list(inputs.literature),
            "",
        ]
    elif inputs.reference:
        out += [
            "The reference rows are not published results: they were measured with this package "
            "on the same embedded glyph test classes (raw pixels: no training at all), as listed "
            "below.",
            "",
            "Sources:",
            "",
            *md.sources_list(inputs.reference),
            "",
        ]
    else:
        out += ["No published numbers exist for this dataset; only this run's are shown.", ""]
    notes = metric_notes(fused)
    return out + [f"- {note}" for note in notes] + ([""] if notes else [])


def _heads(inputs: MarkdownInputs) -> list[str]:
    if len(inputs.test_metrics) <= 1:
        return []
    return [
        "## Per head",
        "",
        "Each embedding head on its own, and the fused test-time embedding (the raw head "
        "outputs concatenated, then L2-normalised).",
        "",
        md.heads_table(inputs.test_metrics, inputs.ks),
        "",
    ]


def _pictures(inputs: MarkdownInputs) -> list[str]:
    out = ["## Pictures", ""]
    for key, (heading, alt, why_not) in _CAPTIONS.items():
        out += [f"### {heading}", ""]
        path = inputs.pictures.get(key)
        if path is not None:
            out += [f"![{alt}]({PICTURE_FILES[key]})", ""]
        elif key == "retrieval_grid" and inputs.no_dataset:
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
            where = "gallery images" if inputs.query_count is not None else "test images"
            self_note = "" if inputs.query_count is not None else ", self excluded"
            out += [
                f"Seeded random queries (left) and their nearest {where}{self_note}: green "
                "border = same class, red = another class.",
                "",
            ]
    return out


def _configuration(inputs: MarkdownInputs) -> list[str]:
    import yaml

    config, history = inputs.config, inputs.history
    steps = [r.get("step") for r in history if isinstance(r.get("step"), int | float)]
    out = ["## Configuration", ""]
    if steps:
        out += [f"Logged {len(history)} records up to iteration {int(max(steps))}.", ""]
    summary = md.config_summary_rows(config)
    if summary:
        rows = [[f"`{k}`", v] for k, v in summary]
        out += [md.markdown_table(["setting", "value"], rows, align=["l", "l"]), ""]
    shown = jsonable(config_without_description(config))
    full = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True).rstrip()
    return out + [
        "<details><summary>Full resolved config (the recipe's one-line description left out: "
        "it describes the recipe, not necessarily this run)</summary>",
        "",
        "```yaml",
        full,
        "```",
        "",
        "</details>",
        "",
        "Files: `metrics.json` (test metrics as fractions, the published and reference rows in "
        "percent with their sources, the config), `report.html` and the PNG pictures next to "
        "this report.",
        "",
    ]
