"""Stanford Online Products with its official class-disjoint split.

Reads ``Ebay_train.txt`` and ``Ebay_test.txt`` (a header ``image_id class_id super_class_id path``,
then one row per image, paths relative to the root). Class names are the product ids
(``class_id``); ``super_labels`` holds the 12 product categories (``super_class_id - 1``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rankedlist.data.benchmark_dataset import BenchmarkDataset, BenchmarkListing

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


class StanfordOnlineProducts(BenchmarkDataset):
    """Stanford Online Products (Oh Song et al. 2016), 120,053 images of 22,634 products.

    Args:
        root: the folder holding ``Ebay_train.txt``, ``Ebay_test.txt`` and the category folders.
        split: ``"train"`` (Ebay_train, minus val), ``"val"`` or ``"test"`` (Ebay_test).
        transform, val_fraction, check_counts, expected_counts, skip_corrupt, val_fold: as for
            :class:`rankedlist.data.benchmark_dataset.BenchmarkDataset`.

    Attributes:
        super_labels: the product category of each image, ``0..11`` (``super_class_id - 1``).
    """

    TITLE = "Stanford Online Products"
    KEY = "sop"
    URL = SOP_URL
    LAYOUT = SOP_LAYOUT
    EXPECTED_COUNTS = SOP_EXPECTED_COUNTS

    def read_listing(self, base: Path) -> BenchmarkListing:
        train_txt = self.require(base / "Ebay_train.txt")
        test_txt = self.require(base / "Ebay_test.txt")
        tr_paths, tr_keys, tr_super = _read_ebay(train_txt)
        te_paths, te_keys, te_super = _read_ebay(test_txt)
        keys = np.concatenate([tr_keys, te_keys])
        train_mask = np.arange(len(keys)) < len(tr_keys)
        return BenchmarkListing(
            image_dir=base,
            relpaths=tr_paths + te_paths,
            class_keys=keys,
            official={"train": train_mask, "test": ~train_mask},
            count_source={"train": train_txt, "test": test_txt},
            per_image={"super_labels": np.concatenate([tr_super, te_super]) - 1},
        )
