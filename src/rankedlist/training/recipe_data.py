"""A recipe's data: the dataset of a split, the evaluation protocol, the query/gallery splits,
and the run's own account of the images a split skipped as unreadable."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from rankedlist.atomic_write import atomic_write_text
from rankedlist.training.config_schema import Config

__all__ = [
    "evaluation_split_names",
    "get_split_dataset",
    "protocol_name",
    "record_skipped_images",
]


def protocol_name(config: Config) -> str:
    from rankedlist.evaluation import PROTOCOLS

    name = config.train.protocol or config.data.dataset
    if name in PROTOCOLS:
        return name
    if config.train.protocol is not None:
        raise ValueError(f"train.protocol = {name!r} is unknown; choose one of {sorted(PROTOCOLS)}")
    return "default"


def get_split_dataset(
    config: Config, split: str, transform: Any, *, quiet_skips: bool = False
) -> Dataset:
    """The dataset of ``split`` as the recipe reads it.

    ``quiet_skips``: leave out the Python warning about images dropped by
    ``data.options.skip_corrupt`` (a run reports them itself with :func:`record_skipped_images`);
    they stay listed in ``dataset.skipped``.
    """
    from rankedlist.data import SkippedImagesWarning, get_dataset

    options = dict(config.data.options)
    options.setdefault("val_fraction", config.data.val_fraction)
    if config.data.dataset == "glyphs" and config.data.image_size is not None:
        options.setdefault("image_size", config.data.image_size)  # render at the input size
    with warnings.catch_warnings():
        if quiet_skips:
            warnings.simplefilter("ignore", SkippedImagesWarning)
        return get_dataset(
            config.data.dataset, root=config.data.root, split=split, transform=transform, **options
        )


def record_skipped_images(dataset: Any, split: str, path: str | Path) -> str | None:
    """List the images ``dataset`` skipped as unreadable in the file ``path``; return the line
    for the run's log, or None when the split skipped none.

    The file holds one line per skipped image, ``split<TAB>path<TAB>reason``, for every split
    recorded into it; a split's earlier lines are replaced, so a resumed run lists each image once
    (and a split that skips nothing any more loses its lines; an emptied file is removed).
    """
    path = Path(path)
    skipped = list(getattr(dataset, "skipped", None) or [])
    kept: list[str] = []
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line.split("\t", 1)[0] != split]
    lines = [f"{split}\t{file}\t{_one_line(why)}" for file, why in skipped]
    if lines or kept:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept + lines))
    elif path.is_file():
        path.unlink()
    if not skipped:
        return None
    noun = "image" if len(skipped) == 1 else "images"
    return f"skipped {len(skipped)} unreadable {noun} of the {split} split (listed in {path})"


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def evaluation_split_names(config: Config, split: str) -> tuple[str, str | None]:
    """(query split, gallery split or None when the queries are their own gallery)."""
    from rankedlist.data import evaluation_splits

    splits = evaluation_splits(config.data.dataset) if split == "test" else (split,)
    return splits[0], (splits[1] if len(splits) > 1 else None)
