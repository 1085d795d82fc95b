"""Cars196 (Stanford Cars) with the deep-metric-learning split: classes 1-98 train, 99-196 test.

Reads ``cars_annos.mat`` (the struct array ``annotations`` with fields ``relative_im_path`` and
``class`` 1..196; the ``test`` flag is the classification split and is ignored) and ``car_ims/``.
The class names come from the ``class_names`` array of the same file when present.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np

from rankedlist.data.image_list_dataset import (
    ImageListDataset,
    benchmark_missing_hint,
    remap_to_contiguous,
    require_file,
    resolve_dir,
)
from rankedlist.data.splits import count_split, select_class_split, verify_counts

__all__ = ["Cars196", "CARS_URL", "CARS_EXPECTED_COUNTS"]

CARS_URL = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
CARS_LAYOUT = "ROOT/cars_annos.mat and ROOT/car_ims/<000001>.jpg"
#: Published counts of the metric-learning split: (images, classes).
CARS_EXPECTED_COUNTS: dict[str, tuple[int, int | None]] = {
    "train": (8054, 98),
    "test": (8131, 98),
}


class Cars196(ImageListDataset):
    """Cars196 (Krause et al. 2013), 16,185 car images in 196 classes.

    Args:
        root: the folder holding ``cars_annos.mat`` and ``car_ims/``.
        split: ``"train"`` (classes 1-98, minus val), ``"val"`` or ``"test"`` (classes 99-196).
        transform, val_fraction, check_counts, expected_counts, skip_corrupt, val_fold: as for
            :class:`rankedlist.data.cub200.CUB200`.
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
        from scipy.io import loadmat  # scipy.io is a slow import; only Cars needs it

        base = resolve_dir(root, "Cars196", CARS_LAYOUT, CARS_URL)
        mat_path = require_file(base / "cars_annos.mat", "Cars196", CARS_LAYOUT, CARS_URL)
        try:
            mat = loadmat(mat_path, squeeze_me=True)
            ann = np.atleast_1d(mat["annotations"])
            relpaths = [str(p) for p in ann["relative_im_path"]]
            keys = np.array([int(c) for c in ann["class"]], dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"Cars196: {mat_path} has no struct array 'annotations' with fields "
                f"'relative_im_path' and 'class' ({err}); it is not the cars_annos.mat of the "
                f"full dataset. Obtain the dataset from {CARS_URL}."
            ) from err
        train_mask, test_mask = keys <= 98, keys > 98
        if check_counts:
            found = {"train": count_split(train_mask, keys), "test": count_split(test_mask, keys)}
            verify_counts(
                "Cars196",
                mat_path,
                found,
                CARS_EXPECTED_COUNTS if expected_counts is None else expected_counts,
                CARS_URL,
            )
        names: dict[int, str] = {}
        if "class_names" in mat:
            names = {i + 1: str(n) for i, n in enumerate(np.atleast_1d(mat["class_names"]))}
        rows = select_class_split(
            split, train_mask, test_mask, keys, val_fraction, "Cars196", val_fold
        )
        idx = np.flatnonzero(rows)
        labels, used = remap_to_contiguous(keys[idx])
        super().__init__(
            [base / relpaths[i] for i in idx],
            labels,
            [names.get(k, str(k)) for k in used],
            transform=transform,
            skip_corrupt=skip_corrupt,
            name=f"cars196/{split}",
            missing_hint=benchmark_missing_hint(CARS_LAYOUT, CARS_URL),
        )
