"""A recipe's data: the dataset of a split, the evaluation protocol, the query/gallery splits."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from rankedlist.training.config import Config

__all__ = ["evaluation_split_names", "get_split_dataset", "protocol_name"]


def protocol_name(config: Config) -> str:
    from rankedlist.evaluation import PROTOCOLS

    name = config.train.protocol or config.data.dataset
    if name in PROTOCOLS:
        return name
    if config.train.protocol is not None:
        raise ValueError(f"train.protocol = {name!r} is unknown; choose one of {sorted(PROTOCOLS)}")
    return "default"


def get_split_dataset(config: Config, split: str, transform: Any) -> Dataset:
    from rankedlist.data import get_dataset

    options = dict(config.data.options)
    options.setdefault("val_fraction", config.data.val_fraction)
    if config.data.dataset == "glyphs" and config.data.image_size is not None:
        options.setdefault("image_size", config.data.image_size)  # render at the input size
    return get_dataset(
        config.data.dataset, root=config.data.root, split=split, transform=transform, **options
    )


def evaluation_split_names(config: Config, split: str) -> tuple[str, str | None]:
    """(query split, gallery split or None when the queries are their own gallery)."""
    from rankedlist.data import evaluation_splits

    splits = evaluation_splits(config.data.dataset) if split == "test" else (split,)
    return splits[0], (splits[1] if len(splits) > 1 else None)
