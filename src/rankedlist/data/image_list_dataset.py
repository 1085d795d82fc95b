"""The shared base of every file-backed dataset: image paths, integer labels and class names.

Every dataset in :mod:`rankedlist.data` keeps its labels in memory as a 1-D ``int64`` numpy array,
so samplers and statistics never decode an image. Images are decoded lazily in
:meth:`ImageListDataset.load_image`, always to RGB (CUB-200-2011 has greyscale JPEGs, user folders
have palette and RGBA PNGs).

Unreadable images. By default a corrupt or truncated file raises :class:`CorruptImageError` (an
``OSError``) naming the file when it is loaded. With ``skip_corrupt=True`` every image is decoded
once up front (in a thread pool, since Pillow releases the GIL while decoding); the unreadable ones
are dropped with one warning that gives their count and the first few paths, and listed in
``dataset.skipped``. Labels are re-mapped afterwards so they stay contiguous even when a class lost
all of its images. The up-front pass costs one full decode of the dataset (seconds for CUB, a few
minutes for SOP on two cores).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rankedlist.data.labeled_image_dataset import LabeledImageDataset

__all__ = [
    "CorruptImageError",
    "ImageListDataset",
    "read_rgb",
    "remap_to_contiguous",
    "require_file",
    "resolve_dir",
]


class CorruptImageError(OSError):
    """An image file exists but cannot be decoded."""


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB ``PIL.Image``.

    Transparent images are composited over white (a product photo's transparent background is
    white on the web, not black). Raises FileNotFoundError when the file is missing and
    :class:`CorruptImageError` naming the file when it cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            # convert() forces the full decode here, so truncated files fail now, not in a worker.
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, rgba).convert("RGB")
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CorruptImageError(
            f"cannot decode image {path}: {err}. Replace or delete the file, or pass "
            "skip_corrupt=True to skip unreadable images with a warning."
        ) from err


def remap_to_contiguous(keys: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Map arbitrary class keys to labels ``0..C-1`` in sorted key order.

    Returns ``(labels, unique_keys)`` where ``unique_keys[labels[i]] == keys[i]``.
    """
    unique, inverse = np.unique(np.asarray(keys), return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), unique.tolist()


class ImageListDataset(LabeledImageDataset):
    """A dataset of image files with one integer label each.

    Args:
        paths: image file paths (absolute, or relative to the working directory).
        labels: integer labels, contiguous ``0..C-1`` (use :func:`remap_to_contiguous`).
        classes: the class names, ``classes[label]``.
        transform: applied to the RGB ``PIL.Image`` in ``__getitem__``; ``None`` returns the image.
        skip_corrupt: decode every image now and drop unreadable ones with a warning.
        name: dataset name used in messages.
        num_workers: threads for the ``skip_corrupt`` pass (default: the CPU count).
        keep_classes: after ``skip_corrupt`` keep the class list and labels as they are even if a
            class lost all its images (In-Shop's query and gallery must share labels); by default
            labels are re-mapped to stay contiguous.

    Attributes:
        paths (list[str]), labels (np.ndarray int64), classes (list[str]),
        skipped (list[tuple[str, str]]): the files dropped by ``skip_corrupt`` and why,
        source_index (np.ndarray): row ``i`` is row ``source_index[i]`` of the given lists.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[Any],
        transform: Callable | None = None,
        skip_corrupt: bool = False,
        name: str = "dataset",
        num_workers: int | None = None,
        keep_classes: bool = False,
    ) -> None:
        self.name = name
        self._keep_classes = keep_classes
        self.paths = [os.fspath(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in classes]
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []
        # Row i of this dataset is row source_index[i] of the lists passed in (they differ only
        # after skip_corrupt), so subclasses can align their own per-image arrays.
        self.source_index = np.arange(len(self.paths))
        if len(self.paths) != len(self.labels):
            raise ValueError(
                f"{name}: {len(self.paths)} paths but {len(self.labels)} labels; they must match"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"{name}: labels must lie in 0..{len(self.classes) - 1} (one per class name), "
                f"found {self.labels.min()}..{self.labels.max()}"
            )
        if skip_corrupt:
            self._drop_unreadable(num_workers)

    def _drop_unreadable(self, num_workers: int | None) -> None:
        def probe(path: str) -> str | None:
            try:
                read_rgb(path)
            except (OSError, CorruptImageError) as err:
                return str(err)
            return None

        workers = num_workers or min(32, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = list(pool.map(probe, self.paths))
        bad = [i for i, e in enumerate(errors) if e is not None]
        if not bad:
            return
        self.skipped = [(self.paths[i], errors[i]) for i in bad]  # type: ignore[misc]
        keep = np.ones(len(self.paths), dtype=bool)
        keep[bad] = False
        examples = ", ".join(p for p, _ in self.skipped[:3])
        warnings.warn(
            f"{self.name}: skipped {len(bad)} unreadable image(s) of {len(self.paths)} "
            f"(e.g. {examples}); see dataset.skipped for the reasons",
            stacklevel=3,
        )
        self.paths = [p for p, k in zip(self.paths, keep, strict=True) if k]
        self.source_index = self.source_index[keep]
        self.labels = self.labels[keep]
        if not self._keep_classes:
            # A class can lose all its images: re-map so labels stay contiguous.
            self.labels, used = remap_to_contiguous(self.labels)
            self.classes = [self.classes[c] for c in used]

    def load_image(self, index: int) -> Image.Image:
        """The untransformed RGB image at ``index`` (for pictures in reports)."""
        return read_rgb(self.paths[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, images={len(self)}, "
            f"classes={self.num_classes})"
        )


def resolve_dir(root: str | os.PathLike | None, dataset: str, layout: str, url: str) -> Path:
    """Check that ``root`` is an existing folder and return it as a Path."""
    if root is None:
        raise ValueError(
            f"{dataset} needs root=PATH, the folder that holds it ({layout}). "
            f"Obtain the dataset from {url}."
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{dataset}: root folder {path} does not exist. Expected layout: {layout}. "
            f"Obtain the dataset from {url}."
        )
    return path


def require_file(path: Path, dataset: str, layout: str, url: str) -> Path:
    """Raise FileNotFoundError naming ``path`` and the expected layout when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: file {path} not found. Expected layout: {layout}. "
            f"Obtain the dataset from {url}."
        )
    return path
