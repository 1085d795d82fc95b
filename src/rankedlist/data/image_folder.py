"""A folder of images, one sub-folder per class, for users' own data.

Two layouts are accepted:

* ``ROOT/train/<class>/...`` and ``ROOT/test/<class>/...`` (and optionally
  ``ROOT/val/<class>/...``): the splits are the folders. A ``val`` folder is used when
  ``val_fraction`` is 0; with ``val_fraction > 0`` the val classes are carved from ``train``.
* ``ROOT/<class>/...``: a class-disjoint split by a fixed rule, the first classes in sorted name
  order train and the last ``test_fraction`` (default half) test, as CUB and Cars are split.

A root whose only sub-folders are split names but not both ``train`` and ``test`` (say ``train``
alone) is a split layout with a folder missing and raises FileNotFoundError naming it. (A class
called ``train`` in the flat layout has other class folders beside it, so it stays a class.)

Images are found recursively under each class folder (sorted, so the order is the same
everywhere); names starting with ``.`` (macOS ``._*`` resource forks, ``.DS_Store``) are ignored, as
are files whose extension is not an image extension.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from rankedlist.data.image_list_dataset import ImageListDataset, remap_to_contiguous, resolve_dir
from rankedlist.data.splits import class_fraction_split, select_class_split

__all__ = ["ImageFolderDataset", "IMG_EXTENSIONS", "list_image_files"]

IMG_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)
FOLDER_LAYOUT = "ROOT/<class>/<image> or ROOT/{train,test[,val]}/<class>/<image>"
_SPLIT_DIRS = ("train", "val", "test")


def list_image_files(folder: Path, extensions: Iterable[str] = IMG_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), skipping hidden and ``._*`` entries."""
    exts = tuple(e.lower() for e in extensions)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and fn.lower().endswith(exts):
                found.append(Path(dirpath) / fn)
    return found


def _scan_classes(folder: Path, extensions: Iterable[str]) -> tuple[list[Path], list[str]]:
    paths: list[Path] = []
    keys: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            for p in list_image_files(entry, extensions):
                paths.append(p)
                keys.append(entry.name)
    return paths, keys


class ImageFolderDataset(ImageListDataset):
    """Images in per-class folders (see the module docstring for the two layouts).

    Args:
        root: the dataset folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the RGB PIL image.
        val_fraction: share of the training classes moved to ``val`` (see :mod:`.splits`).
        test_fraction: share of the classes (last in sorted order) that form ``test`` when the
            folder has no ``train``/``test`` sub-folders.
        extensions: accepted file extensions (lower case, with the dot).
        skip_corrupt: decode all images now and skip unreadable ones with a warning.
        val_fold: which disjoint set of val classes (0: the default; see :mod:`.splits`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        transform: Callable | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.5,
        extensions: Iterable[str] = IMG_EXTENSIONS,
        skip_corrupt: bool = False,
        val_fold: int = 0,
    ) -> None:
        base = resolve_dir(root, "image folder", FOLDER_LAYOUT, "your own data")
        if split not in _SPLIT_DIRS:
            raise ValueError(f"folder: unknown split {split!r}; use 'train', 'val' or 'test'")
        explicit = (base / "train").is_dir() and (base / "test").is_dir()
        subdirs = {e.name for e in base.iterdir() if e.is_dir() and not e.name.startswith(".")}
        if not explicit and subdirs and subdirs <= set(_SPLIT_DIRS):
            # Only split folders: not classes called train/test, but a split layout missing one.
            missing = [str(base / d) for d in ("train", "test") if d not in subdirs]
            raise FileNotFoundError(
                f"folder: {base} has {' and '.join(f'{d}/' for d in sorted(subdirs))} but no "
                f"{' or '.join(missing)}; with split folders both ROOT/train/<class>/<image> and "
                "ROOT/test/<class>/<image> are needed (ROOT/val/<class>/<image> is optional). Add "
                f"{' and '.join(missing)}, or put the class folders directly in {base} for an "
                "automatic class-disjoint split."
            )
        if explicit:
            parts = {
                s: _scan_classes(base / s, extensions) for s in _SPLIT_DIRS if (base / s).is_dir()
            }
            if split == "val" and val_fraction == 0.0 and "val" in parts:
                paths, keys_list = parts["val"]
                keys = np.array(keys_list)
                rows = np.ones(len(keys), dtype=bool)
            else:
                tr_paths, tr_keys = parts["train"]
                te_paths, te_keys = parts["test"]
                paths = tr_paths + te_paths
                keys = np.array(tr_keys + te_keys)
                train_mask = np.arange(len(keys)) < len(tr_keys)
                rows = select_class_split(
                    split, train_mask, ~train_mask, keys, val_fraction, f"folder {base}", val_fold
                )
        else:
            paths, keys_list = _scan_classes(base, extensions)
            keys = np.array(keys_list)
            if len(keys) == 0:
                raise FileNotFoundError(
                    f"folder: no images found under {base}. Expected layout: {FOLDER_LAYOUT} "
                    f"with extensions {', '.join(extensions)}."
                )
            train_mask, test_mask = class_fraction_split(keys, test_fraction)
            rows = select_class_split(
                split, train_mask, test_mask, keys, val_fraction, f"folder {base}", val_fold
            )
        idx = np.flatnonzero(rows)
        if len(idx) == 0:
            raise FileNotFoundError(
                f"folder: the {split!r} split of {base} holds no images. Expected layout: "
                f"{FOLDER_LAYOUT}."
            )
        labels, classes = remap_to_contiguous(keys[idx])
        super().__init__(
            [paths[i] for i in idx],
            labels,
            classes,
            transform=transform,
            skip_corrupt=skip_corrupt,
            name=f"folder/{split}",
            # The files were found by listing the folders: missing means a broken link or a file
            # deleted since.
            missing_hint="They are broken links or were deleted while the folder was read; fix "
            "or delete them",
        )
