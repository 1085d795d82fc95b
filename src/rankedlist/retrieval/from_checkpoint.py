"""A training run's checkpoint -> its model -> an index of a folder of images, and searches."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from rankedlist.retrieval.embed_images import embed_images, list_images, resolve_device
from rankedlist.retrieval.embedding_index import EmbeddingIndex, Match

__all__ = [
    "CheckpointModel",
    "build_index_from_checkpoint",
    "load_model_from_checkpoint",
    "resolve_checkpoint",
    "search_images",
]


@dataclass
class CheckpointModel:
    """A trained model rebuilt from a checkpoint, with its test-time transform.

    ``config`` is the run's resolved config as a plain dict, ``image_size`` the side the
    transform resizes to (``data.image_size`` of the run, else the model's ``input_size``).
    """

    model: nn.Module
    transform: Callable
    image_size: int
    checkpoint: Path
    config: dict[str, Any] = field(default_factory=dict)
    iteration: int | None = None


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A ``.pt`` file as given; a run folder means its ``best.pt`` (the model selected on the
    val split, which the run's test numbers used) or, without one, its ``last.pt``."""
    path = Path(checkpoint)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run folder {path} holds neither best.pt nor last.pt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass a .pt file or a run folder")
    return path


def load_model_from_checkpoint(
    checkpoint: str | os.PathLike, device: str = "auto"
) -> CheckpointModel:
    """Rebuild a run's model from its checkpoint, in eval mode on ``device``.

    The checkpoint (written by the trainer, ``rankedlist.training.save_checkpoint``) holds the
    resolved config under ``"config"`` and the model's ``state_dict`` under ``"model"``; the
    model is built from the config's ``model`` section exactly as the trainer builds it (without
    fetching pretrained weights: the checkpoint has them all).
    """
    from rankedlist.data import build_transform
    from rankedlist.training import build_model, config_from_dict, load_checkpoint

    path = resolve_checkpoint(checkpoint)
    try:
        state = load_checkpoint(path, map_location="cpu")
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except ValueError as err:
        if str(path) in str(err):  # already names the file and says what is wrong
            raise
        raise _unreadable(path, err) from err
    except Exception as err:  # torch.load raises many types for a damaged zip/pickle
        raise _unreadable(path, err) from err
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(
            f"checkpoint {path} has no 'config' entry: it was not written by `rankedlist train`; "
            "pass a run folder or its best.pt / last.pt"
        )
    try:
        config = config_from_dict(state["config"])
        model = build_model(config, load_pretrained=False)  # the checkpoint has every weight
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"the config stored in checkpoint {path} cannot be rebuilt ({_first_line(err)}): it "
            "is damaged or from an incompatible rankedlist version"
        ) from err
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(
            f"the weights in checkpoint {path} do not fit its config's model: {_first_line(err)}"
        ) from err
    model.to(resolve_device(device)).eval()
    image_size = int(config.data.image_size or model.input_size)
    transform = build_transform(model.input_style, False, image_size)
    return CheckpointModel(
        model=model,
        transform=transform,
        image_size=image_size,
        checkpoint=path,
        config=config.to_dict(),
        iteration=state.get("iteration"),
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unreadable(path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"checkpoint {path} is not a readable rankedlist checkpoint (truncated, empty or another "
        f"kind of file: {type(err).__name__}: {_first_line(err)}); pass a run folder or its "
        "best.pt / last.pt as written by `rankedlist train`, or copy the file again if a copy was "
        "cut short"
    )


def _labels_from_folders(root: Path, paths: Sequence[Path]) -> tuple[np.ndarray, list[str]]:
    """Class of each image = its top-level sub-folder under ``root`` (``root/<class>/...``)."""
    names = []
    for p in paths:
        parts = p.relative_to(root).parts
        if len(parts) < 2:
            raise ValueError(
                f"labels_from_folders needs every image in a class sub-folder (ROOT/<class>/"
                f"<image>), but {p} lies directly in {root}"
            )
        names.append(parts[0])
    classes = sorted(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray([lookup[n] for n in names], dtype=np.int64), classes


def build_index_from_checkpoint(
    checkpoint: str | os.PathLike,
    images_folder: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    skip_corrupt: bool = False,
    labels_from_folders: bool = False,
) -> EmbeddingIndex:
    """Embed every image under ``images_folder`` with a checkpoint's model into an index.

    Items are the image paths relative to ``images_folder`` (recorded, absolute, as
    ``meta["images_root"]``), so the index survives moving the folder when ``images_root`` is
    edited. ``meta`` also records the checkpoint, its iteration, the model spec, the run's
    config and the transform's image size. With ``labels_from_folders`` each image's label is
    its class sub-folder (``meta["classes"]`` names them), which enables
    :meth:`EmbeddingIndex.evaluate` and right/wrong frames in search pictures.
    """
    root = Path(images_folder)
    paths = list_images(root)
    if not paths:
        raise ValueError(f"no image files found under {root}")
    loaded = load_model_from_checkpoint(checkpoint, device)
    out = embed_images(
        loaded.model,
        paths,
        loaded.transform,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
        skip_corrupt=skip_corrupt,
    )
    if skip_corrupt:
        emb, kept = out
        paths = [paths[i] for i in kept]
    else:
        emb = out
    labels, classes = (None, None)
    if labels_from_folders:
        labels, classes = _labels_from_folders(root, paths)
    meta: dict[str, Any] = {
        "checkpoint": str(loaded.checkpoint.resolve()),
        "iteration": loaded.iteration,
        "model_spec": dict(getattr(loaded.model, "spec", {})),
        "input_style": loaded.model.input_style,
        "image_size": loaded.image_size,
        "config": loaded.config,
        "images_root": str(root.resolve()),
    }
    if classes is not None:
        meta["classes"] = classes
    return EmbeddingIndex(emb, [p.relative_to(root).as_posix() for p in paths], labels, meta)


def search_images(
    index: EmbeddingIndex,
    model: nn.Module | CheckpointModel | str | os.PathLike,
    query_paths: Sequence[str | os.PathLike],
    k: int = 10,
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = False,
    skip_corrupt: bool = False,
) -> list[list[Match]]:
    """Embed query images and return each one's ``k`` nearest items of ``index``.

    Args:
        index: an index built with the same model.
        model: a checkpoint path (or run folder), a :class:`CheckpointModel`, or an
            ``EmbeddingModel`` (its test transform then uses ``index.meta["image_size"]`` when
            recorded, else the model's ``input_size``).
        query_paths: image files.
        k: neighbours per query (cut to the index size).
        skip_corrupt: leave out unreadable query images with a warning instead of raising.

    Returns:
        One list of :class:`Match` per query, most similar first; with ``skip_corrupt`` an
        unreadable query's list is empty (any other has at least one match).
    """
    from rankedlist.data import build_transform

    if isinstance(model, str | os.PathLike):
        model = load_model_from_checkpoint(model, device)
        built_with = index.meta.get("checkpoint")
        if built_with is not None and Path(built_with).resolve() != model.checkpoint.resolve():
            warnings.warn(
                f"the index was built with {built_with} but the queries are embedded with "
                f"{model.checkpoint}; similarities are only meaningful with the same model",
                stacklevel=2,
            )
    if isinstance(model, CheckpointModel):
        net, transform = model.model, model.transform
    else:
        net = model
        size = index.meta.get("image_size") or net.input_size
        transform = build_transform(net.input_style, False, int(size))
    if isinstance(query_paths, str | os.PathLike):
        query_paths = [query_paths]
    query_paths = list(query_paths)
    out = embed_images(
        net,
        query_paths,
        transform,
        batch_size=batch_size,
        device=device,
        progress=progress,
        skip_corrupt=skip_corrupt,
    )
    if not skip_corrupt:
        return index.search_items(out, k)
    query, kept = out
    results: list[list[Match]] = [[] for _ in query_paths]
    for row, matches in zip(kept.tolist(), index.search_items(query, k), strict=True):
        results[row] = matches
    return results
