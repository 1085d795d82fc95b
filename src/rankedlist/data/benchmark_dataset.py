"""The shared base of the published benchmarks (CUB-200-2011, Cars196, SOP, In-Shop).

Each benchmark is read the same way: check the root folder, read the list files of the official
layout into a :class:`BenchmarkListing`, compare the official split sizes with the published ones
(:func:`rankedlist.data.splits.verify_counts`), select the rows of the asked split (the val
classes carved from the training classes, :func:`rankedlist.data.splits.select_class_split`) and
hand the image paths to :class:`~rankedlist.data.image_list_dataset.ImageListDataset`. A
benchmark's own module says only what is its own: its files and their format
(:meth:`BenchmarkDataset.read_listing`), its split rule and its published counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rankedlist.data.image_list_dataset import (
    ImageListDataset,
    benchmark_missing_hint,
    remap_to_contiguous,
    require_file,
    resolve_dir,
)
from rankedlist.data.splits import count_split, select_class_split, verify_counts

__all__ = ["BenchmarkDataset", "BenchmarkListing", "ExpectedCounts"]

#: ``{split: (images, classes)}``; a class count of None is not checked.
ExpectedCounts = Mapping[str, tuple[int, int | None]]


@dataclass
class BenchmarkListing:
    """What a benchmark's list files say, one row per listed image.

    Attributes:
        image_dir: the folder the relative paths start from.
        relpaths: each row's image path, relative to ``image_dir``.
        class_keys: each row's class (an id or a name), as listed.
        official: the rows of each official split, ``{"train": mask, "test": mask, ...}``.
        count_source: the list file the split sizes come from (named in the error), or
            ``{split: file}`` when each official split has a list file of its own (SOP): each
            is then checked alone, and only when the expected counts give it.
        class_names: reads ``{class key: display name}`` (a key not in it is named
            ``str(key)``); called after the count check, so that a wrong copy is reported by its
            counts before any optional file of it is read.
        per_image: further per-row arrays, set as attributes of the dataset for its rows.
    """

    image_dir: Path
    relpaths: list[str]
    class_keys: np.ndarray
    official: dict[str, np.ndarray]
    count_source: Path | dict[str, Path]
    class_names: Callable[[], Mapping[Any, str]] = dict
    per_image: dict[str, np.ndarray] = field(default_factory=dict)


class BenchmarkDataset(ImageListDataset):
    """A published benchmark read from its official layout.

    Args:
        root: the folder holding the dataset (each benchmark's docstring says which).
        split: ``"train"`` (the official training classes, minus val), ``"val"`` or ``"test"``
            (In-Shop: ``"query"`` and ``"gallery"`` instead of ``"test"``).
        transform: applied to the RGB PIL image.
        val_fraction: share of the training classes moved to ``val`` (see :mod:`.splits`).
        check_counts: compare the split sizes with the published ones.
        expected_counts: replace the published counts (``{"train": (images, classes), ...}``).
        skip_corrupt: decode all images now and skip unreadable ones with a warning.
        val_fold: which disjoint set of val classes (0: the default; see :mod:`.splits`).
    """

    #: The dataset's name in messages, e.g. ``"CUB-200-2011"``.
    TITLE: ClassVar[str]
    #: The short name in ``dataset.name`` (``"<key>/<split>"``), its registry name.
    KEY: ClassVar[str]
    #: Where to obtain the dataset.
    URL: ClassVar[str]
    #: The expected files, said in every message about a missing or wrong file.
    LAYOUT: ClassVar[str]
    #: The published ``{split: (images, classes)}``.
    EXPECTED_COUNTS: ClassVar[ExpectedCounts]
    #: Splits whose labels index a class list shared with another split (In-Shop's query and
    #: gallery): kept as it is when ``skip_corrupt`` empties a class.
    SHARED_CLASS_SPLITS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        transform: Callable | None = None,
        val_fraction: float = 0.0,
        check_counts: bool = True,
        expected_counts: ExpectedCounts | None = None,
        skip_corrupt: bool = False,
        val_fold: int = 0,
    ) -> None:
        self.check_split(split)
        listing = self.read_listing(resolve_dir(root, self.TITLE, self.LAYOUT, self.URL))
        if check_counts:
            expected = self.EXPECTED_COUNTS if expected_counts is None else expected_counts
            self.verify_listing(listing, expected)
        rows, labels, classes = self.select_rows(listing, split, val_fraction, val_fold)
        super().__init__(
            [listing.image_dir / listing.relpaths[i] for i in rows],
            labels,
            classes,
            transform=transform,
            skip_corrupt=skip_corrupt,
            name=f"{self.KEY}/{split}",
            missing_hint=benchmark_missing_hint(self.LAYOUT, self.URL),
            keep_classes=split in self.SHARED_CLASS_SPLITS,
        )
        for attribute, values in listing.per_image.items():
            setattr(self, attribute, values[rows][self.source_index])

    def check_split(self, split: str) -> None:
        """Refuse a split before anything is read (by default :meth:`select_rows` checks it)."""

    def read_listing(self, base: Path) -> BenchmarkListing:
        """Read the list files under the root folder ``base``."""
        raise NotImplementedError(f"{type(self).__name__} must define read_listing")

    def require(self, path: Path) -> Path:
        """``path``, or a FileNotFoundError naming it and the expected layout."""
        return require_file(path, self.TITLE, self.LAYOUT, self.URL)

    def verify_listing(self, listing: BenchmarkListing, expected: ExpectedCounts) -> None:
        """Raise :class:`~rankedlist.data.splits.DatasetCountError` unless every official split
        has the ``expected`` size."""
        keys = listing.class_keys
        found = {split: count_split(mask, keys) for split, mask in listing.official.items()}
        if not isinstance(listing.count_source, dict):
            verify_counts(self.TITLE, listing.count_source, found, expected, self.URL)
            return
        for split, source in listing.count_source.items():
            if split in expected:
                only = {split: expected[split]}
                verify_counts(self.TITLE, source, {split: found[split]}, only, self.URL)

    def select_rows(
        self, listing: BenchmarkListing, split: str, val_fraction: float, val_fold: int
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(rows of split, their labels 0..C-1, the class names)``: the official test split, or
        the training classes less (``train``) or only (``val``) the val classes."""
        keys = listing.class_keys
        names = listing.class_names()
        mask = select_class_split(
            split,
            listing.official["train"],
            listing.official.get("test"),
            keys,
            val_fraction,
            self.TITLE,
            val_fold,
        )
        rows = np.flatnonzero(mask)
        labels, used = remap_to_contiguous(keys[rows])
        return rows, labels, [names.get(k, str(k)) for k in used]
