"""Datasets, the P x K sampler and the input transforms.

``get_dataset(name, root=None, split="train", transform=None, **options)`` builds any of
:func:`list_datasets` (the registry: :mod:`rankedlist.data.registry`): ``glyphs`` (embedded, no
download), ``cub200``, ``cars196``, ``sop``, ``inshop``, ``folder`` and ``csv``. Every dataset has
``labels`` (1-D int64 numpy, contiguous ``0..C-1``, read without decoding images), ``classes``
(names, ``classes[label]``), ``__len__``, ``__getitem__(i) -> (transform(image), int label)`` and
``load_image(i) -> PIL.Image`` (RGB, untransformed). Splits: ``train``, ``val`` (class-disjoint,
carved from the training classes by ``val_fraction``; empty by default) and ``test``; In-Shop has
``query`` and ``gallery`` instead of ``test`` (:func:`evaluation_splits`).
"""

from __future__ import annotations

from rankedlist.data.cars196 import Cars196
from rankedlist.data.csv_dataset import CSVDataset
from rankedlist.data.cub200 import CUB200
from rankedlist.data.glyph_font_coverage import glyph_fonts
from rankedlist.data.glyphs import GlyphDataset, glyph_dropped_classes
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
from rankedlist.data.registry import (
    evaluation_splits,
    get_dataset,
    list_datasets,
    register_dataset,
)
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
