"""A CSV list of images for users' own data: columns ``path``, ``label`` and an optional ``split``.

The file needs a header row naming at least ``path`` and ``label`` (other columns are ignored).
``path`` is relative to ``image_root`` (default: the CSV file's folder) unless absolute;
``label`` is a class name or number (classes sort numerically when every label is an integer,
else by name).

With a ``split`` column (values ``train``, ``val``, ``test``) the rows say their split; ``val`` rows
are used when ``val_fraction`` is 0, otherwise val classes are carved from the ``train`` rows.
Without it, the split is class-disjoint by a fixed rule: the first classes in sorted order train,
the last ``test_fraction`` (default half) test.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rankedlist.data.image_list_dataset import ImageListDataset, remap_to_contiguous
from rankedlist.data.splits import class_fraction_split, select_class_split

__all__ = ["CSVDataset"]

_SPLITS = ("train", "val", "test")


class CSVDataset(ImageListDataset):
    """Images listed in a CSV file (see the module docstring for the format).

    Args:
        root: the CSV file.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the RGB PIL image.
        val_fraction: share of the training classes moved to ``val``.
        test_fraction: share of the classes forming ``test`` when there is no ``split`` column.
        image_root: the folder relative paths start from (default: the CSV's folder).
        skip_corrupt: decode all images now and skip unreadable ones with a warning.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        transform: Callable | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.5,
        image_root: str | os.PathLike | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if root is None:
            raise ValueError("csv needs root=PATH of a CSV file with columns path,label[,split]")
        csv_path = Path(root).expanduser()
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"csv: file {csv_path} not found; expected a CSV file with a header row and the "
                "columns path,label and optionally split"
            )
        if split not in _SPLITS:
            raise ValueError(f"csv: unknown split {split!r}; use 'train', 'val' or 'test'")
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise ValueError(
                    f"csv: {csv_path} needs a header row with the columns 'path' and 'label' "
                    f"(and optionally 'split'), found {fields}"
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
        rows = [r for r in rows if r.get("path")]
        if not rows:
            raise ValueError(f"csv: {csv_path} lists no images")
        base = Path(image_root).expanduser() if image_root is not None else csv_path.parent
        paths = [Path(r["path"]) if os.path.isabs(r["path"]) else base / r["path"] for r in rows]
        raw = [r["label"] for r in rows]
        try:
            keys = np.array([int(v) for v in raw], dtype=np.int64)
        except ValueError:
            keys = np.array(raw)
        where = f"csv {csv_path}"
        if "split" in fields:
            tags = np.array([r.get("split", "").lower() for r in rows])
            unknown = sorted(set(tags.tolist()) - set(_SPLITS))
            if unknown:
                raise ValueError(
                    f"csv: {csv_path} has split values {unknown}; allowed: train, val, test"
                )
            if split == "val" and val_fraction == 0.0 and (tags == "val").any():
                selected = tags == "val"
            else:
                selected = select_class_split(
                    split, tags == "train", tags == "test", keys, val_fraction, where
                )
        else:
            train_mask, test_mask = class_fraction_split(keys, test_fraction)
            selected = select_class_split(split, train_mask, test_mask, keys, val_fraction, where)
        idx = np.flatnonzero(selected)
        if len(idx) == 0:
            raise ValueError(f"csv: the {split!r} split of {csv_path} holds no images")
        labels, classes = remap_to_contiguous(keys[idx])
        super().__init__(
            [paths[i] for i in idx],
            labels,
            classes,
            transform=transform,
            skip_corrupt=skip_corrupt,
            name=f"csv/{split}",
        )
