"""Cars196 (Stanford Cars) with the deep-metric-learning split: classes 1-98 train, 99-196 test.

Reads ``cars_annos.mat`` (the struct array ``annotations`` with fields ``relative_im_path`` and
``class`` 1..196; the ``test`` flag is the classification split and is ignored) and ``car_ims/``.
The class names come from the ``class_names`` array of the same file when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rankedlist.data.benchmark_dataset import BenchmarkDataset, BenchmarkListing

__all__ = ["Cars196", "CARS_URL", "CARS_EXPECTED_COUNTS"]

CARS_URL = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
CARS_LAYOUT = "ROOT/cars_annos.mat and ROOT/car_ims/<000001>.jpg"
#: Published counts of the metric-learning split: (images, classes).
CARS_EXPECTED_COUNTS: dict[str, tuple[int, int | None]] = {
    "train": (8054, 98),
    "test": (8131, 98),
}


class Cars196(BenchmarkDataset):
    """Cars196 (Krause et al. 2013), 16,185 car images in 196 classes.

    Args:
        root: the folder holding ``cars_annos.mat`` and ``car_ims/``.
        split: ``"train"`` (classes 1-98, minus val), ``"val"`` or ``"test"`` (classes 99-196).
        transform, val_fraction, check_counts, expected_counts, skip_corrupt, val_fold: as for
            :class:`rankedlist.data.benchmark_dataset.BenchmarkDataset`.
    """

    TITLE = "Cars196"
    KEY = "cars196"
    URL = CARS_URL
    LAYOUT = CARS_LAYOUT
    EXPECTED_COUNTS = CARS_EXPECTED_COUNTS

    def read_listing(self, base: Path) -> BenchmarkListing:
        from scipy.io import loadmat  # scipy.io is a slow import; only Cars needs it

        mat_path = self.require(base / "cars_annos.mat")
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
        names: dict[int, str] = {}
        if "class_names" in mat:
            names = {i + 1: str(n) for i, n in enumerate(np.atleast_1d(mat["class_names"]))}
        return BenchmarkListing(
            image_dir=base,
            relpaths=relpaths,
            class_keys=keys,
            # The metric-learning split: the first 98 classes train, the last 98 test.
            official={"train": keys <= 98, "test": keys > 98},
            count_source=mat_path,
            class_names=lambda: names,
        )
