"""CUB-200-2011 with the deep-metric-learning split: classes 1-100 train, 101-200 test.

Reads ``images.txt`` (``id relpath``) and ``image_class_labels.txt`` (``id class``); the class names
come from ``classes.txt`` when present. ``train_test_split.txt`` is the classification split (every
class on both sides) and is deliberately not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rankedlist.data.benchmark_dataset import BenchmarkDataset, BenchmarkListing

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


def _class_names(base: Path, relpaths: list[str], keys: np.ndarray) -> dict[int, str]:
    """``classes.txt`` when present, else each class's folder name (001.Black_footed_Albatross)."""
    if (base / "classes.txt").is_file():
        return _read_pairs(base / "classes.txt")
    names: dict[int, str] = {}
    for rel, k in zip(relpaths, keys, strict=True):
        names.setdefault(int(k), rel.split("/")[0])
    return names


class CUB200(BenchmarkDataset):
    """CUB-200-2011 (Wah et al. 2011), 11,788 bird images in 200 classes.

    Args:
        root: the folder holding ``CUB_200_2011/`` (or that folder itself).
        split: ``"train"`` (classes 1-100, minus val), ``"val"`` or ``"test"`` (classes 101-200).
        transform, val_fraction, check_counts, expected_counts, skip_corrupt, val_fold: as for
            :class:`rankedlist.data.benchmark_dataset.BenchmarkDataset`.
    """

    TITLE = "CUB-200-2011"
    KEY = "cub200"
    URL = CUB_URL
    LAYOUT = CUB_LAYOUT
    EXPECTED_COUNTS = CUB_EXPECTED_COUNTS

    def read_listing(self, base: Path) -> BenchmarkListing:
        if (base / "CUB_200_2011" / "images.txt").is_file():
            base = base / "CUB_200_2011"
        images_txt = self.require(base / "images.txt")
        labels_txt = self.require(base / "image_class_labels.txt")
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
        return BenchmarkListing(
            image_dir=base / "images",
            relpaths=relpaths,
            class_keys=keys,
            # The metric-learning split: the first 100 classes train, the last 100 test.
            official={"train": keys <= 100, "test": keys > 100},
            count_source=images_txt,
            class_names=lambda: _class_names(base, relpaths, keys),
        )
