"""Validation folds (``val_fold``): F class-disjoint val splits carved from the training classes.

References: for a val_fraction of 1/m the default split holds every class whose sorted position i
has (i + 1) divisible by m, and fold j the classes j positions before those: (i + j + 1) % m == 0.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from rankedlist.data import (
    CUB200,
    Cars196,
    CSVDataset,
    GlyphDataset,
    ImageFolderDataset,
    InShop,
    StanfordOnlineProducts,
)
from rankedlist.data.splits import val_class_mask


def reference_fold(n: int, m: int, fold: int) -> list[int]:
    """The positions of fold ``fold``'s val classes among ``n`` for val_fraction 1 / m."""
    return [i for i in range(n) if (i + fold + 1) % m == 0 and i + fold < n]


@pytest.mark.parametrize(("n", "m"), [(10, 4), (23, 5), (88, 5), (100, 4), (7, 2), (40, 3)])
def test_the_folds_are_disjoint_and_cover_f_times_the_fraction(n: int, m: int) -> None:
    fraction = 1 / m
    folds = [val_class_mask(n, fraction, fold) for fold in range(m)]  # F x fraction = 1
    for fold, mask in enumerate(folds):
        assert np.flatnonzero(mask).tolist() == reference_fold(n, m, fold), fold
        assert mask.sum() == n // m  # each fold as large as the default split
    assert not (np.sum(folds, axis=0) > 1).any()  # disjoint
    assert np.sum(folds) == m * (n // m)  # F x floor(fraction x n) classes in all


@pytest.mark.parametrize("n", [1, 2, 5, 10, 37, 100])
@pytest.mark.parametrize("f", [0.0, 0.1, 0.2, 0.25, 0.5, 0.9])
def test_fold_0_is_the_default_split(n: int, f: float) -> None:
    try:
        default = val_class_mask(n, f)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            val_class_mask(n, f, 0)
        return
    np.testing.assert_array_equal(val_class_mask(n, f, 0), default)


def test_tiny_class_counts_move_the_single_val_class() -> None:
    # 3 classes, 0.2: floor(0.6) = 0, so each fold holds one class: the last, then the ones before
    assert [np.flatnonzero(val_class_mask(3, 0.2, j)).tolist() for j in range(3)] == [[2], [1], [0]]


@pytest.mark.parametrize(
    ("n", "fraction", "fold", "message"),
    [
        (100, 0.25, 4, r"val_fold=4 with val_fraction=0.25: folds 0 to 4 would hold 5 x 0.25 = "
                       r"1.25 .*use val_fold <= 3 or val_fraction <= 0.2"),
        (100, 0.0, 1, r"val_fold=1 needs a val split, but val_fraction is 0"),
        (100, 0.2, -1, r"val_fold must be an integer >= 0, got -1"),
        (100, 0.2, True, r"val_fold must be an integer >= 0, got True"),
        (100, 0.2, 1.0, r"val_fold must be an integer >= 0, got 1.0"),
        (3, 0.2, 3, r"val_fold=3 .* 3 training classes: the folds 0 to 3 would share classes"),
    ],
)  # fmt: skip
def test_a_fold_the_fraction_does_not_allow_is_an_error(n, fraction, fold, message) -> None:
    with pytest.raises(ValueError, match=message):
        val_class_mask(n, fraction, fold)


@pytest.mark.parametrize(
    "cls", [CUB200, Cars196, StanfordOnlineProducts, InShop, ImageFolderDataset, CSVDataset,
            GlyphDataset]
)  # fmt: skip
def test_every_dataset_takes_val_fold(cls) -> None:
    assert inspect.signature(cls).parameters["val_fold"].default == 0


def test_glyph_folds_hold_disjoint_val_classes(glyph_cache: Path, glyph_splits) -> None:
    train_all, test = glyph_splits
    classes = sorted(train_all.classes)  # the training classes in sorted order
    assert classes == train_all.classes
    n = len(classes)
    vals, trains = [], []
    for fold in range(4):  # 4 folds of 0.2: 0.8 of the training classes
        kw = {"cache_dir": glyph_cache, "val_fraction": 0.2, "val_fold": fold}
        val, train = GlyphDataset("val", **kw), GlyphDataset("train", **kw)
        assert val.classes == [classes[i] for i in reference_fold(n, 5, fold)]
        assert sorted(train.classes + val.classes) == classes  # train: all but its own fold
        assert set(val.classes).isdisjoint(test.classes)
        vals.append(set(val.classes))
        trains.append(train)
    assert all(a.isdisjoint(b) for i, a in enumerate(vals) for b in vals[i + 1 :])
    assert len(set().union(*vals)) == 4 * (n // 5) == 4 * int(0.2 * n)
    # val_fold=0 is today's split, bit for bit
    for split in ("val", "train"):
        today = GlyphDataset(split, cache_dir=glyph_cache, val_fraction=0.2)
        fold0 = GlyphDataset(split, cache_dir=glyph_cache, val_fraction=0.2, val_fold=0)
        assert fold0.classes == today.classes and fold0.fonts == today.fonts
        np.testing.assert_array_equal(fold0.images, today.images)
        np.testing.assert_array_equal(fold0.labels, today.labels)
    with pytest.raises(ValueError, match=r"^glyphs: val_fold=5 with val_fraction=0.2"):
        GlyphDataset("val", cache_dir=glyph_cache, val_fraction=0.2, val_fold=5)
