"""Datasets, the P x K sampler and the input transforms.

``get_dataset(name, root=None, split="train", transform=None, **options)`` builds any of
:func:`list_datasets`: ``glyphs`` (embedded, no download), ``cub200``, ``cars196``, ``sop``,
``inshop``, ``folder`` and ``csv``. Every dataset has ``labels`` (1-D int64 numpy, contiguous
``0..C-1``, read without decoding images), ``classes`` (names, ``classes[label]``), ``__len__``,
``__getitem__(i) -> (transform(image), int label)`` and ``load_image(i) -> PIL.Image`` (RGB,
untransformed). Splits: ``train``, ``val`` (class-disjoint, carved from the training classes by
``val_fraction``; empty by default) and ``test``; In-Shop has ``query`` and ``gallery`` instead of
``test`` (:func:`evaluation_splits`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rankedlist.data.cars196 import Cars196
from rankedlist.data.csv_dataset import CSVDataset
from rankedlist.data.cub200 import CUB200
from rankedlist.data.glyph_font_coverage import glyph_fonts
from rankedlist.data.glyphs import GlyphDataset, default_cache_dir, glyph_dropped_classes
from rankedlist.data.image_folder import ImageFolderDataset
from rankedlist.data.image_list_dataset import (
    CorruptImageError,
    ImageListDataset,
    MissingImagesError,
    SkippedImagesWarning,
    read_rgb,
)
from rankedlist.data.inshop import InShop
from rankedlist.data.pk_sampler import PKSampler
from rankedlist.data.sop import StanfordOnlineProducts
from rankedlist.data.splits import DatasetCountError
from rankedlist.data.transforms import build_batch_augment, build_transform

__all__ = [
    "CUB200",
    "CSVDataset",
    "Cars196",
    "CorruptImageError",
    "DatasetCountError",
    "GlyphDataset",
    "ImageFolderDataset",
    "ImageListDataset",
    "InShop",
    "MissingImagesError",
    "PKSampler",
    "SkippedImagesWarning",
    "StanfordOnlineProducts",
    "build_batch_augment",
    "build_transform",
    "evaluation_splits",
    "get_dataset",
    "glyph_dropped_classes",
    "glyph_fonts",
    "list_datasets",
    "read_rgb",
    "register_dataset",
]


def _glyphs(root: str | os.PathLike | None, split: str, transform: Callable | None, **kw: Any):
    # Glyphs are rendered, so root is optional: when given it is the cache folder. It must exist,
    # so that a typo or a root left over from another dataset does not create a stray folder.
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"glyphs: root {folder} is not an existing folder. The glyphs are rendered from "
                "the fonts inside matplotlib and need no root; a root only says where to cache "
                f"the renders ({folder / 'glyphs'}). Create the folder, or leave root unset to "
                f"cache in {default_cache_dir() / 'glyphs'}."
            )
        kw.setdefault("cache_dir", folder)
    return GlyphDataset(split=split, transform=transform, **kw)


_REGISTRY: dict[str, Callable[..., Any]] = {
    "glyphs": _glyphs,
    "cub200": CUB200,
    "cars196": Cars196,
    "sop": StanfordOnlineProducts,
    "inshop": InShop,
    "folder": ImageFolderDataset,
    "csv": CSVDataset,
}
_EVAL_SPLITS: dict[str, tuple[str, ...]] = {"inshop": ("query", "gallery")}


def register_dataset(
    name: str, factory: Callable[..., Any], eval_splits: tuple[str, ...] = ("test",)
) -> None:
    """Add a dataset: ``factory(root, split, transform, **options)`` returns the dataset.

    ``eval_splits`` is ``("test",)`` for self-retrieval or ``(query_split, gallery_split)``.
    """
    if name in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    _REGISTRY[name] = factory
    if eval_splits != ("test",):
        _EVAL_SPLITS[name] = eval_splits


def list_datasets() -> list[str]:
    """The names :func:`get_dataset` accepts."""
    return sorted(_REGISTRY)


def evaluation_splits(name: str) -> tuple[str, ...]:
    """How ``name`` is tested: ``("test",)`` (each query against the rest of the test split) or
    ``("query", "gallery")`` (In-Shop)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    return _EVAL_SPLITS.get(name, ("test",))


def get_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Callable | None = None,
    **options: Any,
) -> Any:
    """Build dataset ``name`` (see :func:`list_datasets`) for ``split``.

    Args:
        name: ``glyphs``, ``cub200``, ``cars196``, ``sop``, ``inshop``, ``folder`` or ``csv``.
        root: the dataset folder (the CSV file for ``csv``). ``glyphs`` are rendered and need
            none; given, it must be an existing folder, which then holds the render cache.
        split: ``train``, ``val`` or ``test`` (``query``/``gallery`` for ``inshop``).
        transform: applied to the RGB PIL image in ``__getitem__``.
        **options: passed to the dataset class, e.g. ``val_fraction``, ``check_counts``,
            ``expected_counts``, ``skip_corrupt``; ``image_size``, ``fonts_dir`` for glyphs.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    return _REGISTRY[name](root, split=split, transform=transform, **options)
