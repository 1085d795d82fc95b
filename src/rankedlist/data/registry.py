"""The dataset registry: ``get_dataset(name, ...)``, ``list_datasets()``, ``register_dataset``.

A registered factory is called as ``factory(root, split=..., transform=..., **options)`` and returns
the dataset (see :mod:`rankedlist.data` for what every dataset provides). The built-in datasets are
registered at the bottom of this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rankedlist.data.cars196 import Cars196
from rankedlist.data.csv_dataset import CSVDataset
from rankedlist.data.cub200 import CUB200
from rankedlist.data.glyphs import GlyphDataset, default_cache_dir
from rankedlist.data.image_folder import ImageFolderDataset
from rankedlist.data.inshop import InShop
from rankedlist.data.sop import StanfordOnlineProducts

__all__ = [
    "DatasetFactory",
    "evaluation_splits",
    "get_dataset",
    "list_datasets",
    "register_dataset",
]

#: ``factory(root, split=..., transform=..., **options) -> dataset``.
DatasetFactory = Callable[..., Any]

_REGISTRY: dict[str, DatasetFactory] = {}
# Only the datasets tested as query against gallery; every other one is ("test",).
_EVAL_SPLITS: dict[str, tuple[str, ...]] = {}


def register_dataset(
    name: str, factory: DatasetFactory | None = None, eval_splits: tuple[str, ...] = ("test",)
) -> Callable[[DatasetFactory], DatasetFactory] | DatasetFactory:
    """Add a dataset: ``factory(root, split, transform, **options)`` returns the dataset (usable
    as a decorator when ``factory`` is left out).

    ``eval_splits`` is ``("test",)`` for self-retrieval or ``(query_split, gallery_split)``.
    """

    def add(fn: DatasetFactory) -> DatasetFactory:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = fn
        if eval_splits != ("test",):
            _EVAL_SPLITS[name] = eval_splits
        return fn

    return add if factory is None else add(factory)


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


@register_dataset("glyphs")
def _glyphs(
    root: str | os.PathLike | None, split: str, transform: Callable | None, **kw: Any
) -> GlyphDataset:
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


register_dataset("cub200", CUB200)
register_dataset("cars196", Cars196)
register_dataset("sop", StanfordOnlineProducts)
register_dataset("inshop", InShop, eval_splits=("query", "gallery"))
register_dataset("folder", ImageFolderDataset)
register_dataset("csv", CSVDataset)
