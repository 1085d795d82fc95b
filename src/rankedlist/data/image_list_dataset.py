"""The shared base of every file-backed dataset: image paths, integer labels and class names.

Every dataset in :mod:`rankedlist.data` keeps its labels in memory as a 1-D ``int64`` numpy array,
so samplers and statistics never decode an image. Images are decoded lazily in
:meth:`ImageListDataset.load_image`, always to RGB (CUB-200-2011 has greyscale JPEGs, user folders
have palette and RGBA PNGs).

Missing images. Every listed file is checked to exist when the dataset is built (a directory
listing per folder, no decode: well under a second for SOP's 120k files), so a wrong root or an
incomplete copy fails at once with one :class:`MissingImagesError` giving the count and the first
few paths, not hours into training when the loader reaches them.

Unreadable images. By default a corrupt or truncated file raises :class:`CorruptImageError` (an
``OSError``) naming the file when it is loaded. With ``skip_corrupt=True`` every image is decoded
once up front (in a thread pool, since Pillow releases the GIL while decoding); the unreadable and
the missing ones are dropped with one :class:`SkippedImagesWarning` that gives their count and the
first few paths, and listed in ``dataset.skipped`` (a training run filters that warning out and
reports the skipped files in its own log and run folder instead). Labels are re-mapped
afterwards so they stay contiguous even when a class lost all of its images. The up-front pass
costs one full decode of the dataset (seconds for CUB, a few minutes for SOP on two cores).
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
    "SKIP_CORRUPT_HINT",
    "CorruptImageError",
    "ImageListDataset",
    "MissingImagesError",
    "SkippedImagesWarning",
    "benchmark_missing_hint",
    "read_rgb",
    "remap_to_contiguous",
    "require_file",
    "resolve_dir",
]


#: How a Python caller skips unreadable images; a command line passes its own wording to
#: ``describe`` (e.g. ``"pass --skip-corrupt"``).
SKIP_CORRUPT_HINT = "pass skip_corrupt=True"
MISSING_EXAMPLES = 5  # missing files named in the message


class CorruptImageError(OSError):
    """An image file exists but cannot be decoded.

    Constructible from the message alone (torch's DataLoader re-raises a worker's error as
    ``type(message)``); :func:`read_rgb` also sets the attributes.

    Attributes:
        path (str | None): the file that cannot be decoded; None when built from a message alone.
        reason (str | None): what the decoder reported.

    ``describe(skip_hint)`` returns the message with ``skip_hint`` (default
    :data:`SKIP_CORRUPT_HINT`, the Python option) as the way to skip unreadable images, so a command
    line can name its own option.
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_file(cls, path: str, reason: str) -> CorruptImageError:
        """The error for ``path``, with the default message."""
        return cls(_corrupt_message(path, reason, SKIP_CORRUPT_HINT), path=path, reason=reason)

    def describe(self, skip_hint: str = SKIP_CORRUPT_HINT) -> str:
        """The message, with ``skip_hint`` as the way to skip unreadable images."""
        if self.path is None:
            return str(self)
        return _corrupt_message(self.path, self.reason or "unknown error", skip_hint)


def _corrupt_message(path: str, reason: str, skip_hint: str) -> str:
    return (
        f"cannot decode image {path}: {reason}. Replace or delete the file, or {skip_hint} to "
        "skip unreadable images with a warning."
    )


class SkippedImagesWarning(UserWarning):
    """``skip_corrupt`` dropped unreadable or missing images (listed in ``dataset.skipped``)."""


class MissingImagesError(FileNotFoundError):
    """Image files listed by a dataset do not exist (raised when the dataset is built).

    Constructible from the message alone, like :class:`CorruptImageError`.

    Attributes:
        dataset (str | None): the dataset name, e.g. ``"csv/train"``.
        missing (list[str]): every missing path, in dataset order.
        sources (list[str | None]): where each missing path is listed (e.g. ``"line 7 of
            list.csv"``), None where the dataset does not say.
        total (int): the number of files the dataset lists.
        hint (str): the dataset's own advice (e.g. where relative paths start from).

    ``describe(skip_hint)`` returns the message with ``skip_hint`` (default
    :data:`SKIP_CORRUPT_HINT`) as the way to leave the missing files out.
    """

    def __init__(
        self,
        message: str,
        *,
        dataset: str | None = None,
        missing: Sequence[str] = (),
        sources: Sequence[str | None] = (),
        total: int = 0,
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.missing = list(missing)
        self.sources = list(sources) or [None] * len(self.missing)
        self.total = total
        self.hint = hint

    @classmethod
    def for_files(
        cls,
        dataset: str,
        missing: Sequence[str],
        sources: Sequence[str | None],
        total: int,
        hint: str,
    ) -> MissingImagesError:
        """The error for ``missing``, with the default message."""
        message = _missing_message(dataset, missing, sources, total, hint, SKIP_CORRUPT_HINT)
        return cls(
            message, dataset=dataset, missing=missing, sources=sources, total=total, hint=hint
        )

    def describe(self, skip_hint: str = SKIP_CORRUPT_HINT) -> str:
        """The message, with ``skip_hint`` as the way to leave the missing files out."""
        if self.dataset is None or not self.missing:
            return str(self)
        return _missing_message(
            self.dataset, self.missing, self.sources, self.total, self.hint, skip_hint
        )


def _missing_message(
    dataset: str,
    missing: Sequence[str],
    sources: Sequence[str | None],
    total: int,
    hint: str,
    skip_hint: str,
) -> str:
    shown = [
        p if where is None else f"{p} ({where})"
        for p, where in zip(missing[:MISSING_EXAMPLES], sources[:MISSING_EXAMPLES], strict=True)
    ]
    more = len(missing) - len(shown)
    listed = ", ".join(shown) + (f" and {more} more" if more else "")
    return (
        f"{dataset}: {len(missing)} of {total} image files do not exist: {listed}. {hint}, or "
        f"{skip_hint} to leave the missing files out with a warning."
    )


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
        raise CorruptImageError.for_file(path, str(err)) from err


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
        skip_corrupt: decode every image now and drop unreadable and missing ones with a warning.
        name: dataset name used in messages.
        num_workers: threads for the ``skip_corrupt`` pass and the existence check (default: the
            CPU count).
        keep_classes: after ``skip_corrupt`` keep the class list and labels as they are even if a
            class lost all its images (In-Shop's query and gallery must share labels); by default
            labels are re-mapped to stay contiguous.
        sources: where each path is listed (e.g. ``"line 7 of list.csv"``), named beside the
            missing files in :class:`MissingImagesError`.
        missing_hint: the dataset's advice in that error, a clause such as ``"Correct the paths"``
            (the way to skip missing files is appended).

    Raises:
        MissingImagesError: listed files do not exist (unless ``skip_corrupt``, which drops them).

    Attributes:
        paths (list[str]), labels (np.ndarray int64), classes (list[str]),
        skipped (list[tuple[str, str]]): the files dropped by ``skip_corrupt`` and why
            (``"file not found"``, ``"cannot decode: <the decoder's message>"``),
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
        sources: Sequence[str] | None = None,
        missing_hint: str = "Correct the paths",
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
        if sources is not None and len(sources) != len(self.paths):
            raise ValueError(
                f"{name}: {len(self.paths)} paths but {len(sources)} sources; they must match"
            )
        if skip_corrupt:
            self._drop_unreadable(num_workers)  # drops the missing files too
            return
        missing = missing_files(self.paths, num_workers)
        if missing:
            raise MissingImagesError.for_files(
                name,
                [self.paths[i] for i in missing],
                [None if sources is None else sources[i] for i in missing],
                len(self.paths),
                missing_hint,
            )

    def _drop_unreadable(self, num_workers: int | None) -> None:
        def probe(path: str) -> str | None:
            # Why, in a few words: the errors' own advice (replace the file, or skip it) is moot.
            try:
                read_rgb(path)
            except CorruptImageError as err:
                return f"cannot decode: {err.reason}"
            except FileNotFoundError:
                return "file not found"
            except OSError as err:
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
            SkippedImagesWarning,
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


_SCANDIR_MIN = 32  # list a folder once rather than stat each of at least this many files in it


def missing_files(paths: Sequence[str], num_workers: int | None = None) -> list[int]:
    """Indices of the ``paths`` that are not existing files, in order; no file is opened.

    Folders holding many of the paths are listed once with ``os.scandir`` (one directory read
    instead of a stat per file: what matters on network file systems); a name the listing lacks is
    confirmed with ``os.path.isfile``, since case-insensitive file systems open ``IMG.JPG`` as
    ``img.jpg``. Large lists are checked in a thread pool (the system calls release the GIL).
    """
    by_dir: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_dir.setdefault(os.path.dirname(p), []).append(i)

    def check(groups: list[tuple[str, list[int]]]) -> list[int]:
        missing: list[int] = []
        for folder, idx in groups:
            names: set[str] = set()
            if len(idx) >= _SCANDIR_MIN:
                try:
                    with os.scandir(folder or ".") as entries:
                        names = {e.name for e in entries if e.is_file()}
                except OSError:
                    pass  # an unreadable or missing folder: the stat below decides
            missing.extend(
                i
                for i in idx
                if os.path.basename(paths[i]) not in names and not os.path.isfile(paths[i])
            )
        return missing

    groups = list(by_dir.items())
    workers = min(8, num_workers or os.cpu_count() or 1, len(groups))
    if workers <= 1 or len(paths) < 4096:
        return sorted(check(groups))
    # Contiguous chunks of folders, several per thread, so a folder-per-image list does not
    # create one future per file.
    chunk = -(-len(groups) // (workers * 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(check, [groups[i : i + chunk] for i in range(0, len(groups), chunk)])
        return sorted(i for part in found for i in part)


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


def benchmark_missing_hint(layout: str, url: str) -> str:
    """The advice in :class:`MissingImagesError` for a published dataset read from its layout."""
    return (
        f"The copy is incomplete or not in the expected layout ({layout}); obtain the dataset "
        f"from {url}"
    )


def require_file(path: Path, dataset: str, layout: str, url: str) -> Path:
    """Raise FileNotFoundError naming ``path`` and the expected layout when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: file {path} not found. Expected layout: {layout}. "
            f"Obtain the dataset from {url}."
        )
    return path
