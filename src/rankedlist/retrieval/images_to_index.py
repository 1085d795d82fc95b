"""Folders of images -> an index, more images -> the same index, query images -> their matches.

The model is a run's checkpoint or a file exported from it (ONNX, ``.pt2``, TorchScript; see
:mod:`rankedlist.retrieval.index_models`); either way the images go through the same test-time
transform and :func:`embed_images`, so an index built from a model's export equals the one built
from its checkpoint up to the runtimes' float rounding.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.retrieval.embed_images import embed_images, list_images
from rankedlist.retrieval.embedding_index import EmbeddingIndex, Match
from rankedlist.retrieval.index_models import (
    IndexModel,
    check_index_model,
    model_for_index,
    open_index_model,
)

__all__ = ["add_images", "build_index", "build_index_from_checkpoint", "search_images"]


def _labels_from_folders(root: Path, paths: Sequence[Path]) -> list[str]:
    """Class name of each image = its top-level sub-folder under ``root`` (``root/<class>/...``)."""
    names = []
    for p in paths:
        parts = p.relative_to(root).parts
        if len(parts) < 2:
            raise ValueError(
                f"labels from folders need every image in a class sub-folder (ROOT/<class>/"
                f"<image>), but {p} lies directly in {root}"
            )
        names.append(parts[0])
    return names


def _embed_folder(model: IndexModel, root: Path, **options: Any) -> tuple[np.ndarray, list[Path]]:
    """Every image under ``root`` embedded; with ``skip_corrupt`` only the readable ones."""
    paths = list_images(root)
    if not paths:
        raise ValueError(f"no image files found under {root}")
    out = embed_images(model.model, paths, model.transform, **options)
    if options.get("skip_corrupt"):
        emb, kept = out
        return emb, [paths[i] for i in kept]
    return out, paths


def build_index(
    images_folder: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    skip_corrupt: bool = False,
    labels_from_folders: bool = False,
    method: str = "auto",
    **method_params: Any,
) -> EmbeddingIndex:
    """Embed every image under ``images_folder`` with a checkpoint's model or an exported ONNX
    file (``model_file``) into an index searched with ``method`` (see :class:`EmbeddingIndex`).

    Items are the image paths relative to ``images_folder`` (recorded, absolute, as
    ``meta["images_root"]``), so the index survives moving the folder when ``images_root`` is
    edited. ``meta`` also records the model (checkpoint, iteration, spec and config, or the ONNX
    file and its input contract) and the transform's image size. With ``labels_from_folders``
    each image's label is its class sub-folder (``meta["classes"]`` names them), which enables
    :meth:`EmbeddingIndex.evaluate` and right/wrong frames in search pictures.
    """
    root = Path(images_folder)
    if not list_images(root):
        raise ValueError(f"no image files found under {root}")
    model = open_index_model(checkpoint, model_file, device)
    emb, paths = _embed_folder(
        model,
        root,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
        skip_corrupt=skip_corrupt,
    )
    labels, classes = None, None
    if labels_from_folders:
        names = _labels_from_folders(root, paths)
        classes = sorted(set(names))
        lookup = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([lookup[n] for n in names], dtype=np.int64)
    meta: dict[str, Any] = {**model.meta, "images_root": str(root.resolve())}
    if classes is not None:
        meta["classes"] = classes
    items = [p.relative_to(root).as_posix() for p in paths]
    return EmbeddingIndex(emb, items, labels, meta, method=method, **method_params)


def build_index_from_checkpoint(
    checkpoint: str | os.PathLike, images_folder: str | os.PathLike, **options: Any
) -> EmbeddingIndex:
    """:func:`build_index` with a run's checkpoint (a ``.pt`` file or a run folder)."""
    return build_index(images_folder, checkpoint=checkpoint, **options)


def add_images(
    index: EmbeddingIndex,
    images_folder: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    skip_corrupt: bool = False,
    index_name: str | os.PathLike | None = None,
    allow_other_model: bool = False,
) -> int:
    """Embed every image under ``images_folder`` and append it to ``index`` (without rebuilding
    an approximate index: see :meth:`EmbeddingIndex.add`). Returns the number added.

    The model is the index's own unless ``checkpoint`` / ``model_file`` is given; a model with
    other weights than the index's is refused unless ``allow_other_model`` (see
    :func:`~rankedlist.retrieval.index_models.check_index_model`). Items under
    the index's ``images_root`` are named relative to it, others by their absolute path. An
    index with labels labels the new images by their class sub-folder: a known class name gets
    its label, a new one the next label (appended to ``meta["classes"]``).
    """
    root = Path(images_folder)
    if not list_images(root):
        raise ValueError(f"no image files found under {root}")
    model = model_for_index(
        index, checkpoint, model_file, device, index_name, allow_other_model=allow_other_model
    )
    emb, paths = _embed_folder(
        model,
        root,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
        skip_corrupt=skip_corrupt,
    )
    labels = None
    if index.labels is not None:
        names = _labels_from_folders(root, paths)
        classes = list(index.meta.get("classes") or [])
        lookup = {c: i for i, c in enumerate(classes)}
        for name in names:
            if name not in lookup:
                lookup[name] = len(classes)
                classes.append(name)
        labels = np.asarray([lookup[n] for n in names], dtype=np.int64)
        index.meta["classes"] = classes
    images_root = index.meta.get("images_root")
    items = [_item_name(p, images_root) for p in paths]
    known = set(index.items).intersection(items)
    if known:
        warnings.warn(
            f"{len(known)} of the images are in the index already (e.g. {sorted(known)[0]}); "
            "they are added again",
            stacklevel=2,
        )
    index.add(emb, items, labels)
    return len(items)


def _item_name(path: Path, images_root: str | None) -> str:
    resolved = path.resolve()
    if images_root is not None:
        try:
            return resolved.relative_to(Path(images_root)).as_posix()
        except ValueError:
            pass
    return resolved.as_posix()


def search_images(
    index: EmbeddingIndex,
    model: Any,
    query_paths: Sequence[str | os.PathLike],
    k: int = 10,
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = False,
    skip_corrupt: bool = False,
    nprobe: int | None = None,
    ef: int | None = None,
    allow_other_model: bool = False,
) -> list[list[Match]]:
    """Embed query images and return each one's ``k`` nearest items of ``index``.

    Args:
        index: an index built with the same model.
        model: a checkpoint path (or run folder), an exported ``.onnx``/``.pt2``/``.ts`` file, a
            :class:`~rankedlist.training.checkpoint_model.CheckpointModel` or
            :class:`~rankedlist.retrieval.index_models.IndexModel`, or an ``EmbeddingModel``
            (its test transform then uses ``index.meta["image_size"]`` when recorded, else the
            model's ``input_size``).
        query_paths: image files.
        k: neighbours per query (cut to the index size).
        skip_corrupt: leave out unreadable query images with a warning instead of raising.
        nprobe, ef: the approximate index's search setting (default: the index's own).
        allow_other_model: embed with a model whose weights are not the index's (a warning);
            by default that is refused with a ValueError, as its similarities mean nothing.

    Returns:
        One list of :class:`Match` per query, most similar first; with ``skip_corrupt`` an
        unreadable query's list is empty (any other has at least one match).
    """
    from rankedlist.data import build_transform
    from rankedlist.training.checkpoint_model import CheckpointModel

    index.search_setting(nprobe, ef)  # a wrong setting fails before any embedding
    if isinstance(model, str | os.PathLike):
        is_onnx = Path(model).suffix.lower() == ".onnx"
        model = model_for_index(
            index,
            None if is_onnx else model,
            model if is_onnx else None,
            device,
            allow_other_model=allow_other_model,
        )
    elif isinstance(model, IndexModel):
        if model.checked_for is not index:
            check_index_model(
                index, model.meta.get("model_fingerprint"), (model.source,), model.option,
                allow_other_model=allow_other_model,
            )  # fmt: skip
    else:
        net = model.model if isinstance(model, CheckpointModel) else model
        path = getattr(model, "checkpoint", None) or getattr(model, "path", None)
        check_index_model(
            index, _fingerprint(net), (path or repr(net),), allow_other_model=allow_other_model
        )
    if isinstance(model, CheckpointModel | IndexModel):
        net, transform = model.model, model.transform
    else:
        net = model
        size = index.meta.get("image_size") or net.input_size
        # An exported model's contract records its normalisation; a module carries its own.
        contract = getattr(net, "contract", None) or {}
        transform = build_transform(
            net.input_style,
            False,
            int(size),
            mean=contract.get("mean", getattr(net, "input_mean", None)),
            std=contract.get("std", getattr(net, "input_std", None)),
        )
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
        return index.search_items(out, k, nprobe=nprobe, ef=ef)
    query, kept = out
    results: list[list[Match]] = [[] for _ in query_paths]
    found = index.search_items(query, k, nprobe=nprobe, ef=ef)
    for row, matches in zip(kept.tolist(), found, strict=True):
        results[row] = matches
    return results


def _fingerprint(net: Any) -> str | None:
    """The fingerprint of a model object: a torch module's weights, or an ONNX model's own."""
    import torch

    from rankedlist.models.fingerprint import model_fingerprint

    if isinstance(net, torch.nn.Module):
        return model_fingerprint(net)
    return getattr(net, "fingerprint", None)
