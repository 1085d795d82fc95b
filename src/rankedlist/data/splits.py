"""Class-disjoint splits, the validation carve-out and the count checks shared by all datasets.

Validation split. ``val_fraction`` (default 0.0, the published protocol: ``train`` holds every
training class) moves ``floor(val_fraction * C)`` of the ``C`` training classes (at least one
when the fraction is positive) into ``val``; ``train`` then leaves them out. Which classes: the
training classes in sorted order, taken at evenly spaced positions (class ``i`` goes to val when
``floor((i + 1) * f) > floor(i * f)``). The rule needs no random generator, so it is identical on
every machine and numpy version, and spreads val across the class range (CUB's classes are
ordered by bird family, the glyphs' by script).

Validation folds. ``val_fold`` (default 0: the split above) picks another, disjoint set of val
classes of the same size: fold ``j`` takes the classes ``j`` positions before fold 0's (class ``i``
goes to val when class ``i + j`` is in fold 0's val). Folds ``0 .. F-1`` are disjoint when
``F * val_fraction <= 1`` (fold 0's val classes are at least ``floor(1 / val_fraction)`` positions
apart), so they cover ``F`` times ``floor(val_fraction * C)`` classes; a ``val_fold`` past that is
a ``ValueError``. ``train`` leaves out only its own fold's val classes.

Count checks. Each benchmark reader counts the images and classes of every official split from its
list file and compares them with the published numbers; a mismatch raises
:class:`DatasetCountError` naming the file, the expected and the found counts and where to obtain
the dataset. ``check_counts=False`` disables the check;
``expected_counts={"train": (images, classes), ...}`` replaces the published numbers (a class
count of ``None`` is not checked), which is how the tests check miniature copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetCountError",
    "count_split",
    "select_class_split",
    "val_class_mask",
    "verify_counts",
]


class DatasetCountError(ValueError):
    """A dataset's list files do not give the published image or class counts."""


def val_class_mask(num_classes: int, val_fraction: float, val_fold: int = 0) -> np.ndarray:
    """Boolean mask over ``num_classes`` sorted training classes: True for the val classes of
    fold ``val_fold`` (0: the default split; see the module docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be in [0, 1), got {val_fraction}; 0.2 moves a fifth of the "
            "training classes into the val split"
        )
    if isinstance(val_fold, bool) or not isinstance(val_fold, (int, np.integer)) or val_fold < 0:
        raise ValueError(
            f"val_fold must be an integer >= 0, got {val_fold!r}; 0 is the default val split, "
            "1, 2, ... the disjoint folds after it"
        )
    val_fold = int(val_fold)
    if val_fold and val_fraction == 0.0:
        raise ValueError(
            f"val_fold={val_fold} needs a val split, but val_fraction is 0; pass val_fraction=0.2 "
            "(for example) with it"
        )
    if val_fold and (val_fold + 1) * val_fraction > 1.0 + 1e-9:
        raise ValueError(
            f"val_fold={val_fold} with val_fraction={val_fraction:g}: folds 0 to {val_fold} would "
            f"hold {val_fold + 1} x {val_fraction:g} = {(val_fold + 1) * val_fraction:g} of the "
            f"training classes, more than all of them; use val_fold <= "
            f"{max(0, int(1.0 / val_fraction + 1e-9) - 1)} or val_fraction <= "
            f"{1.0 / (val_fold + 1):.4g}"
        )
    mask = np.zeros(num_classes, dtype=bool)
    if val_fraction == 0.0 or num_classes == 0:
        return mask
    i = np.arange(num_classes)
    mask[np.floor((i + 1) * val_fraction) > np.floor(i * val_fraction)] = True
    if not mask.any():  # tiny class counts: still give val one class
        mask[-1] = True
    if mask.all():
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training class out of {num_classes}; "
            "use a smaller fraction"
        )
    if val_fold == 0:
        return mask
    picks = np.flatnonzero(mask)
    if picks[0] < val_fold or (len(picks) > 1 and np.diff(picks).min() <= val_fold):
        raise ValueError(
            f"val_fold={val_fold} with val_fraction={val_fraction:g} and {num_classes} training "
            f"classes: the folds 0 to {val_fold} would share classes; use a smaller val_fold or "
            "val_fraction"
        )
    fold = np.zeros(num_classes, dtype=bool)
    fold[picks - val_fold] = True
    return fold


def select_class_split(
    split: str,
    train_mask: np.ndarray,
    test_mask: np.ndarray | None,
    class_keys: np.ndarray,
    val_fraction: float,
    dataset: str,
    val_fold: int = 0,
) -> np.ndarray:
    """Row mask of ``split`` in ``("train", "val", "test")``.

    ``train_mask``/``test_mask`` mark the rows of the official training and test splits,
    ``class_keys`` gives each row's class; ``val`` is carved from the training classes with
    :func:`val_class_mask` (fold ``val_fold``), and ``train`` leaves those classes out.
    """
    if split == "test":
        if test_mask is None:
            raise ValueError(f"{dataset} has no test split")
        return test_mask
    if split not in ("train", "val"):
        raise ValueError(f"{dataset}: unknown split {split!r}; use 'train', 'val' or 'test'")
    train_classes = np.unique(class_keys[train_mask])
    try:
        in_fold = val_class_mask(len(train_classes), val_fraction, val_fold)
    except ValueError as exc:
        raise ValueError(f"{dataset}: {exc}") from None
    val_classes = train_classes[in_fold]
    if split == "val" and len(val_classes) == 0:
        raise ValueError(
            f"{dataset}: the val split is empty because val_fraction=0 (the published protocol "
            "trains on all training classes); pass val_fraction=0.2 (for example) to carve a "
            "class-disjoint val split out of the training classes"
        )
    in_val = np.isin(class_keys, val_classes)
    return train_mask & (in_val if split == "val" else ~in_val)


def verify_counts(
    dataset: str,
    source: str | Path,
    found: Mapping[str, tuple[int, int]],
    expected: Mapping[str, tuple[int, int | None]],
    url: str,
) -> None:
    """Raise :class:`DatasetCountError` when ``found`` differs from ``expected`` for any split.

    ``found`` and ``expected`` map split names to ``(num_images, num_classes)``; splits in
    ``expected`` but not in ``found`` count as zero images.
    """
    for split, (exp_images, exp_classes) in expected.items():
        got_images, got_classes = found.get(split, (0, 0))
        if got_images != exp_images or (exp_classes is not None and got_classes != exp_classes):
            want = f"{exp_images:,} images" + (
                f" in {exp_classes:,} classes" if exp_classes is not None else ""
            )
            raise DatasetCountError(
                f"{dataset}: {source} gives {got_images:,} images in {got_classes:,} classes for "
                f"the {split!r} split, expected {want}. The copy is incomplete or modified; "
                f"obtain the dataset from {url} (or pass check_counts=False to read a modified "
                "copy on purpose)."
            )


def count_split(mask: np.ndarray, class_keys: np.ndarray) -> tuple[int, int]:
    """``(number of rows, number of distinct classes)`` under ``mask``."""
    return int(mask.sum()), len(np.unique(class_keys[mask]))


def class_fraction_split(
    class_keys: np.ndarray, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows by class: the first sorted classes train, the last ``test_fraction`` test.

    Mirrors the CUB and Cars convention (first half of the classes train, second half test).
    Returns ``(train_mask, test_mask)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes = np.unique(class_keys)
    if len(classes) < 2:
        raise ValueError(
            f"a class-disjoint train/test split needs at least 2 classes, found {len(classes)}"
        )
    n_test = min(max(int(round(len(classes) * test_fraction)), 1), len(classes) - 1)
    test_mask = np.isin(class_keys, classes[len(classes) - n_test :])
    return ~test_mask, test_mask
