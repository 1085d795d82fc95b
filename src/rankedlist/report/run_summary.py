"""What a run is, in words both reports share: its title, a subtitle from the data it was
actually tested on, the label of its row, and the JSON-safe form of its numbers and config.

The subtitle is built from the run's data and test split, never from the recipe's one-line
``description``: a run on a user's own folder started from the glyph recipe would otherwise be
subtitled with the demo's words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The paper's datasets: their runs get the published rows beside their own numbers.
PAPER_DATASETS = ("cub200", "cars196", "sop", "inshop")
DATASET_TITLES = {
    "glyphs": "Glyphs (embedded)",
    "cub200": "CUB-200-2011",
    "cars196": "Cars196",
    "sop": "Stanford Online Products",
    "inshop": "In-Shop Clothes",
}
# Datasets read from a user's own files: the subtitle names where from.
_OWN_DATA = {"folder": "the image folder", "csv": "the image list"}
_RLL_NAMES = ("rll", "ranked_list", "rankedlist", "ranked_list_loss")


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, NaN/inf -> None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # paths, enums, dtypes: their text is what a reader needs


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    return value if isinstance(value, Mapping) else {}


def dataset_name(config: Mapping[str, Any], protocol: str) -> str:
    """The run's ``data.dataset`` (lower case), or the protocol's name when the config has none."""
    name = _section(config, "data").get("dataset")
    return str(name).lower() if name is not None else protocol


def run_title(config: Mapping[str, Any], dataset: str, protocol: str) -> str:
    """``"<data> · <model> · <loss>"``."""
    model, loss = _section(config, "model"), _section(config, "loss")
    data_title = DATASET_TITLES.get(dataset or "", dataset or protocol)
    loss_name = str(loss.get("name", "unknown loss"))
    if model.get("multi_level"):
        loss_name += " (multi-level L,M,H)"
    return f"{data_title} · {model.get('name', 'unknown model')} · {loss_name}"


def run_subtitle(
    config: Mapping[str, Any], dataset: str, num_images: int, query_count: int | None
) -> str:
    """One sentence on what was trained and tested, read from the config and the test split."""
    data = _section(config, "data")
    iterations = _section(config, "train").get("iterations")
    if dataset in _OWN_DATA:
        where = f"{_OWN_DATA[dataset]} {data.get('root')}" if data.get("root") else dataset
    else:
        where = DATASET_TITLES.get(dataset, dataset)
    trained = f"{iterations} iterations on {where}" if iterations else f"trained on {where}"
    tested = (
        f"{query_count} queries against a gallery of {num_images - query_count} images"
        if query_count is not None
        else f"{num_images} test images"
    )
    return f"{our_label(config).removeprefix('This run: ')}: {trained}; tested on {tested}."


def our_label(config: Mapping[str, Any]) -> str:
    """``"This run: RLL-H, glyphnet"``: the row label of the run in the results tables."""
    model, loss = _section(config, "model"), _section(config, "loss")
    name = str(loss.get("name", "this run"))
    if name.lower() in _RLL_NAMES:
        name = "RLL-(L,M,H)" if model.get("multi_level") else "RLL-H"
    return f"This run: {name}" + (f", {model['name']}" if "name" in model else "")


def config_without_description(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config to print in a report: the recipe's ``description`` describes the recipe, not
    necessarily this run (a folder run from the glyph recipe keeps the demo's sentence)."""
    return {k: v for k, v in config.items() if k != "description"}


def plotted_rows(rows: Sequence[Any]) -> list[Any]:
    """Published rows worth a line on the Recall@K plot: the paper's RLL rows, else any RLL or
    reference row (the table lists them all; the plot stays readable)."""
    paper = [r for r in rows if r.kind == "paper" and r.method in ("RLL-H", "RLL-(L,M,H)")]
    return paper or [r for r in rows if r.method.startswith("RLL") or r.kind == "reference"]
