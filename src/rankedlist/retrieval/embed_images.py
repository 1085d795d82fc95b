"""Image files (or a dataset) -> test-time embeddings of a trained model."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rankedlist.data import read_rgb
from rankedlist.data.image_folder import IMG_EXTENSIONS, list_image_files
from rankedlist.training.checkpoint_model import resolve_device

__all__ = ["embed_images", "list_images"]


def list_images(
    folder: str | os.PathLike, extensions: Iterable[str] = IMG_EXTENSIONS
) -> list[Path]:
    """Image files under ``folder``: recursive, sorted, by extension (case-insensitive), without
    hidden files and folders or macOS ``._*`` resource forks.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} not found")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; pass the folder that holds the images")
    # The data package's scan is the one the folder dataset uses: same files, same order.
    return list_image_files(folder, extensions)


class _Images(Dataset):
    """``(position, transformed image)`` of image files or of a dataset's items; an unreadable
    item yields ``(position, what is wrong)`` instead of raising. The main process then warns
    (with ``skip_corrupt``) or raises the error again by reading the item itself: an error
    raised in a data-loader worker would reach the user as a worker traceback, without the
    error's attributes, and a warning given in a worker would be lost."""

    def __init__(self, images: Sequence[Any] | Dataset, transform: Callable | None):
        self.images, self.transform = images, transform
        self.is_paths = not isinstance(images, Dataset)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Any:
        """Item ``i`` as a tensor; raises when it cannot be read (the message names the file)."""
        if self.is_paths:
            image = read_rgb(self.images[i])  # names the file when missing or corrupt
            return image if self.transform is None else self.transform(image)
        return self.images[i][0]  # a rankedlist dataset: (transformed image, label)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.load(i)
        except OSError as err:  # FileNotFoundError, CorruptImageError, a failing read
            return i, self.describe(i, err)

    def describe(self, i: int, err: OSError) -> str:
        """``"<file>: <what is wrong>"`` for a warning, without the error's advice on skipping."""
        path = getattr(err, "path", None) or (self.images[i] if self.is_paths else None)
        if isinstance(err, FileNotFoundError):
            reason = "file not found"
        else:
            reason = getattr(err, "reason", None) or str(err.__cause__ or err)
        return str(err) if path is None else f"{os.fspath(path)}: {reason}"


def _collate(
    batch: list[tuple[int, Any]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """``(kept positions, stacked images or None, [(skipped position, why), ...])``."""
    kept = [(i, x) for i, x in batch if not isinstance(x, str)]
    skipped = [(i, x) for i, x in batch if isinstance(x, str)]
    images = torch.stack([x for _, x in kept]) if kept else None
    return [i for i, _ in kept], images, skipped


def embed_images(
    model: nn.Module,
    images: Sequence[str | os.PathLike] | Dataset,
    transform: Callable | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    skip_corrupt: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Embed images with ``model.embed`` (eval mode, no gradients), in order.

    Args:
        model: an :class:`~rankedlist.models.EmbeddingModel` (anything with ``embed``); it is
            moved to ``device`` and left in the train/eval mode it had.
        images: image file paths, or a dataset whose ``__getitem__`` returns
            ``(transformed image, label)`` (every rankedlist dataset).
        transform: applied to each RGB ``PIL.Image`` read from a path (the model's test
            transform, ``build_transform(model.input_style, False, image_size)``); a dataset
            brings its own, so this must be ``None`` for one.
        batch_size: images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_workers: data-loader processes decoding images.
        progress: show a tqdm progress bar.
        skip_corrupt: leave out unreadable images with a warning instead of raising.

    Returns:
        ``(N, D)`` float32 L2-normalised embeddings; with ``skip_corrupt=True`` a pair
        ``(embeddings, kept)`` where ``kept`` (int64) are the positions in ``images`` of the
        embedded rows.

    Raises:
        FileNotFoundError / CorruptImageError: an image is missing or cannot be decoded (the
            message names the file), unless ``skip_corrupt``.
    """
    from tqdm.auto import tqdm

    if not hasattr(model, "embed"):
        raise TypeError(f"model must have an embed() method (an EmbeddingModel), got {model!r}")
    if isinstance(images, str | os.PathLike):
        raise TypeError(
            "images must be a list of paths or a dataset; for a folder use list_images(folder)"
        )
    if isinstance(images, Dataset) and transform is not None:
        raise ValueError("a dataset applies its own transform: pass transform=None with one")
    if not isinstance(images, Dataset) and transform is None:
        raise ValueError(
            "image paths need the model's test transform, e.g. "
            "build_transform(model.input_style, train=False, image_size=model.input_size)"
        )
    if len(images) == 0:
        raise ValueError("no images to embed")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = resolve_device(device)
    source = _Images(images, transform)
    loader = DataLoader(
        source,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
    )
    was_training = model.training
    model.to(dev).eval()
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    unreadable: list[str] = []
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(images), unit="img", desc="embedding", disable=not progress) as bar,
        ):
            for positions, batch, skipped in loader:
                for position, why in skipped:
                    if not skip_corrupt:
                        source.load(position)  # raises the error here, in this process
                        raise OSError(f"cannot read image {why}")  # it read this time: flaky
                    warnings.warn(f"skipping unreadable image {why}", stacklevel=2)
                    unreadable.append(why)
                if batch is not None:
                    out = model.embed(batch.to(dev, non_blocking=True))
                    chunks.append(out.float().cpu().numpy())
                    kept.extend(positions)
                bar.update(len(positions) + len(skipped))
    finally:
        model.train(was_training)
    if not chunks:
        if len(images) == 1:
            raise ValueError(f"the one image could not be read ({unreadable[0]})")
        raise ValueError(
            f"none of the {len(images)} images could be read (the first: {unreadable[0]})"
        )
    emb = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    if skip_corrupt:
        return emb, np.asarray(kept, dtype=np.int64)
    return emb
