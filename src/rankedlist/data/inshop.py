"""In-Shop Clothes Retrieval (DeepFashion) with its official train / query / gallery partition.

Reads ``Eval/list_eval_partition.txt`` (line 1 the image count, line 2 the header
``image_name item_id evaluation_status``, then ``img/... id_00000001 train|query|gallery``) and the
images under ``Img/`` (``ROOT/Img/img/...``; a copy with ``ROOT/img/...`` works too).

Splits: ``train`` (and ``val``, carved from the training items by ``val_fraction``), ``query`` and
``gallery``. Testing ranks each query against the gallery, so there is no single ``test`` split:
``split="test"`` raises a ValueError that points at ``query``/``gallery`` (see
:func:`rankedlist.data.evaluation_splits`). Query and gallery share one class list, the sorted test
item ids, so the same item has the same label on both sides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rankedlist.data.benchmark_dataset import BenchmarkDataset, BenchmarkListing

__all__ = ["InShop", "INSHOP_URL", "INSHOP_EXPECTED_COUNTS"]

INSHOP_URL = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
INSHOP_LAYOUT = "ROOT/Eval/list_eval_partition.txt and ROOT/Img/img/<GENDER>/<category>/<id>/*.jpg"
#: Published counts: (images, items). "test" is query and gallery together.
INSHOP_EXPECTED_COUNTS: dict[str, tuple[int, int | None]] = {
    "train": (25882, 3997),
    "query": (14218, None),
    "gallery": (12612, None),
    "test": (26830, 3985),
}
_STATUSES = ("train", "query", "gallery")


def _read_partition(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    relpaths: list[str] = []
    items: list[str] = []
    status: list[str] = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if len(lines) < 2 or lines[1].split()[:3] != ["image_name", "item_id", "evaluation_status"]:
        raise ValueError(
            f"In-Shop: {path} should start with a count line and the header "
            f"'image_name item_id evaluation_status'. Obtain the dataset from {INSHOP_URL}."
        )
    for lineno, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in _STATUSES:
            raise ValueError(
                f"{path}:{lineno}: expected 'image_name item_id train|query|gallery', "
                f"got {line.strip()!r}"
            )
        relpaths.append(parts[0])
        items.append(parts[1])
        status.append(parts[2])
    return relpaths, items, np.array(status)


class InShop(BenchmarkDataset):
    """In-Shop Clothes Retrieval (Liu et al. 2016), 52,712 images of 7,982 clothing items.

    Args:
        root: the folder holding ``Eval/`` and ``Img/``.
        split: ``"train"``, ``"val"``, ``"query"`` or ``"gallery"``.
        transform, val_fraction, check_counts, skip_corrupt, val_fold: as for
            :class:`rankedlist.data.benchmark_dataset.BenchmarkDataset`.
        expected_counts: replace the published counts; keys ``train``, ``query``, ``gallery`` and
            ``test`` (query and gallery together; its class count is the number of test items).
    """

    TITLE = "In-Shop"
    KEY = "inshop"
    URL = INSHOP_URL
    LAYOUT = INSHOP_LAYOUT
    EXPECTED_COUNTS = INSHOP_EXPECTED_COUNTS
    SHARED_CLASS_SPLITS = ("query", "gallery")

    def check_split(self, split: str) -> None:
        if split == "test":
            raise ValueError(
                "In-Shop has no single 'test' split: its protocol ranks split='query' against "
                "split='gallery' (rankedlist.data.evaluation_splits('inshop') lists them)"
            )
        if split not in ("train", "val", "query", "gallery"):
            raise ValueError(
                f"In-Shop: unknown split {split!r}; use 'train', 'val', 'query' or 'gallery'"
            )

    def read_listing(self, base: Path) -> BenchmarkListing:
        part = self.require(base / "Eval" / "list_eval_partition.txt")
        relpaths, items, status = _read_partition(part)
        official = {s: status == s for s in _STATUSES}
        official["test"] = official["query"] | official["gallery"]  # counted, never selected
        # The partition file says img/...; the archive unpacks to Img/img/...
        image_dir = base / "Img"
        if relpaths and not (image_dir / relpaths[0]).exists() and (base / relpaths[0]).exists():
            image_dir = base
        return BenchmarkListing(
            image_dir=image_dir,
            relpaths=relpaths,
            class_keys=np.array(items),
            official=official,
            count_source=part,
        )

    def select_rows(
        self, listing: BenchmarkListing, split: str, val_fraction: float, val_fold: int
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if split not in ("query", "gallery"):
            return super().select_rows(listing, split, val_fraction, val_fold)
        # One class list for both sides: labels index the sorted test items.
        keys = listing.class_keys
        test_items = np.unique(keys[listing.official["test"]])
        rows = np.flatnonzero(listing.official[split])
        labels = np.searchsorted(test_items, keys[rows]).astype(np.int64)
        return rows, labels, test_items.tolist()
