"""Stanford Online Products with its official class-disjoint split.

Reads ``Ebay_train.txt`` and ``Ebay_test.txt`` (a header ``image_id class_id super_class_id path``,
then one row per image, paths relative to the root). Class names are the product ids
(``class_id``); ``super_labels`` holds the 12 product categories (``super_class_id - 1``).
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

__all__ = ["StanfordOnlineProducts", "SOP_URL", "SOP_EXPECTED_COUNTS"]

SOP_URL = "https://cvgl.stanford.edu/projects/lifted_struct/"
SOP_LAYOUT = (
    "ROOT/Ebay_train.txt, ROOT/Ebay_test.txt and ROOT/<category>_final/<file>.JPG "
    "(the Stanford_Online_Products folder)"
)
#: Published counts: (images, classes).
SOP_EXPECTED_COUNTS: dict[str, tuple[int, int | None]] = {
    "train": (59551, 11318),
    "test": (60502, 11316),
}


def _read_ebay(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    relpaths: list[str] = []
    classes: list[int] = []
    supers: list[int] = []
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().split()
        if header[:4] != ["image_id", "class_id", "super_class_id", "path"]:
            raise ValueError(
                f"Stanford Online Products: {path} should start with the header "
                f"'image_id class_id super_class_id path', found {' '.join(header)!r}. "
                f"Obtain the dataset from {SOP_URL}."
            )
        for lineno, line in enumerate(fh, 2):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 fields, got {line.strip()!r}")
            classes.append(int(parts[1]))
            supers.append(int(parts[2]))
            relpaths.append(parts[3])
    return relpaths, np.array(classes, dtype=np.int64), np.array(supers, dtype=np.int64)


class StanfordOnlineProducts(ImageListDataset):
    """Stanford Online Products (Oh Song et al. 2016), 120,053 images of 22,634 products.

    Args:
        root: the folder holding ``Ebay_train.txt``, ``Ebay_test.txt`` and the category folders.
        split: ``"train"`` (Ebay_train, minus val), ``"val"`` or ``"test"`` (Ebay_test).
        transform, val_fraction, check_counts, expected_counts, skip_corrupt, val_fold: as for
            :class:`rankedlist.data.cub200.CUB200`.

    Attributes:
        super_labels: the product category of each image, ``0..11`` (``super_class_id - 1``).
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
        name = "Stanford Online Products"
        base = resolve_dir(root, name, SOP_LAYOUT, SOP_URL)
        train_txt = require_file(base / "Ebay_train.txt", name, SOP_LAYOUT, SOP_URL)
        test_txt = require_file(base / "Ebay_test.txt", name, SOP_LAYOUT, SOP_URL)
        tr_paths, tr_keys, tr_super = _read_ebay(train_txt)
        te_paths, te_keys, te_super = _read_ebay(test_txt)
        if check_counts:
            expected = SOP_EXPECTED_COUNTS if expected_counts is None else expected_counts
            all_tr = np.ones(len(tr_keys), dtype=bool)
            all_te = np.ones(len(te_keys), dtype=bool)
            if "train" in expected:
                verify_counts(
                    name,
                    train_txt,
                    {"train": count_split(all_tr, tr_keys)},
                    {"train": expected["train"]},
                    SOP_URL,
                )
            if "test" in expected:
                verify_counts(
                    name,
                    test_txt,
                    {"test": count_split(all_te, te_keys)},
                    {"test": expected["test"]},
                    SOP_URL,
                )
        relpaths = tr_paths + te_paths
        keys = np.concatenate([tr_keys, te_keys])
        supers = np.concatenate([tr_super, te_super])
        train_mask = np.arange(len(keys)) < len(tr_keys)
        rows = select_class_split(
            split, train_mask, ~train_mask, keys, val_fraction, name, val_fold
        )
        idx = np.flatnonzero(rows)
        labels, used = remap_to_contiguous(keys[idx])
        super().__init__(
            [base / relpaths[i] for i in idx],
            labels,
            [str(k) for k in used],
            transform=transform,
            skip_corrupt=skip_corrupt,
            name=f"sop/{split}",
            missing_hint=benchmark_missing_hint(SOP_LAYOUT, SOP_URL),
        )
        self.super_labels = (supers[idx] - 1)[self.source_index]
