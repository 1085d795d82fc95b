"""CUB-200-2011 with the deep-metric-learning split: classes 1-100 train, 101-200 test.

Reads ``images.txt`` (``id relpath``) and ``image_class_labels.txt`` (``id class``); the class names
come from ``classes.txt`` when present. ``train_test_split.txt`` is the classification split (every
class on both sides) and is deliberately not used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from rankedlist.data.image_list_dataset import (
    ImageListDataset,
    benchmark_missing_hint,
    remap_to_contiguous,
    require_file,
    resolve_dir,
)
from rankedlist.data.splits import count_split, select_class_split, verify_counts

__all__ = ["CUB200", "CUB_URL", "CUB_EXPECTED_COUNTS"]

CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
CUB_LAYOUT = (
    "ROOT/CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, "
    "images/<class>/<file>.jpg} "
    "(ROOT may also be the CUB_200_2011 folder itself)"
)
#: Published counts of the metric-learning split: (images, classes).
CUB_EXPECTED_COUNTS: dict[str, tuple[int, int | None]] = {
    "train": (5864, 100),
    "test": (5924, 100),
}


def _read_pairs(path: Path) -> dict[int, str]:
    """``id value`` lines (value may contain no spaces) -> {id: value}."""
    out: dict[int, str] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'id value', got {line.strip()!r}")
            out[int(parts[0])] = parts[1]
    return out


class CUB200(ImageListDataset):
    """CUB-200-2011 (Wah et al. 2011), 11,788 bird images in 200 classes.

    Args:
        root: the folder holding ``CUB_200_2011/`` (or that folder itself).
        split: ``"train"`` (classes 1-100, minus val), ``"val"`` or ``"test"`` (classes 101-200).
        transform: applied to the RGB PIL image.
        val_fraction: share of the training classes moved to ``val`` (see :mod:`.splits`).
        val_fold: which disjoint set of val classes (0: the default; see :mod:`.splits`).
        check_counts: compare the split sizes with the published ones.
        expected_counts: replace the published counts (``{"train": (images, classes), ...}``).
        skip_corrupt: decode all images now and skip unreadable ones with a warning.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        transform: Callable | None = None,
        val_fraction: float = 0.0,
        check_counts: bool = True,
        expected_counts: Mapping[str, tuple[int, int | None]] | None = None,
        skip_corrupt: bool = False,
        val_fold: int = 0,
    ) -> None:
        base = resolve_dir(root, "CUB-200-2011", CUB_LAYOUT, CUB_URL)
        if (base / "CUB_200_2011" / "images.txt").is_file():
            base = base / "CUB_200_2011"
        images_txt = require_file(base / "images.txt", "CUB-200-2011", CUB_LAYOUT, CUB_URL)
        labels_txt = require_file(
            base / "image_class_labels.txt", "CUB-200-2011", CUB_LAYOUT, CUB_URL
        )
        paths_by_id = _read_pairs(images_txt)
        class_by_id = _read_pairs(labels_txt)
        missing = sorted(set(paths_by_id) - set(class_by_id))
        if missing:
            raise ValueError(
                f"CUB-200-2011: {labels_txt} has no class for {len(missing)} image id(s) listed in "
                f"{images_txt} (first: {missing[0]}); the files come from different copies. "
                f"Obtain the dataset from {CUB_URL}."
            )
        ids = sorted(paths_by_id)
        relpaths = [paths_by_id[i] for i in ids]
        keys = np.array([int(class_by_id[i]) for i in ids], dtype=np.int64)
        train_mask, test_mask = keys <= 100, keys > 100
        if check_counts:
            found = {"train": count_split(train_mask, keys), "test": count_split(test_mask, keys)}
            verify_counts(
                "CUB-200-2011",
                images_txt,
                found,
                CUB_EXPECTED_COUNTS if expected_counts is None else expected_counts,
                CUB_URL,
            )
        names: dict[int, str] = {}
        if (base / "classes.txt").is_file():
            names = _read_pairs(base / "classes.txt")
        else:  # the class folder name, e.g. 001.Black_footed_Albatross
            for rel, k in zip(relpaths, keys, strict=True):
                names.setdefault(int(k), rel.split("/")[0])
        rows = select_class_split(
            split, train_mask, test_mask, keys, val_fraction, "CUB-200-2011", val_fold
        )
        idx = np.flatnonzero(rows)
        labels, used = remap_to_contiguous(keys[idx])
        super().__init__(
            [base / "images" / relpaths[i] for i in idx],
            labels,
            [names.get(k, str(k)) for k in used],
            transform=transform,
            skip_corrupt=skip_corrupt,
            name=f"cub200/{split}",
            missing_hint=benchmark_missing_hint(CUB_LAYOUT, CUB_URL),
        )
