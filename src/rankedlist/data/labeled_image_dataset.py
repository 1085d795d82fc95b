"""The contract every rankedlist dataset keeps, written once.

A dataset holds ``labels`` (1-D int64, readable without decoding an image), ``classes`` and an
optional ``transform``; a subclass says only how to produce the untransformed RGB image at an
index (:meth:`load_image`).
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from torch.utils.data import Dataset

__all__ = ["LabeledImageDataset"]


class LabeledImageDataset(Dataset):
    """Base of the file-backed and the rendered datasets: ``(transform(image), label)`` items."""

    labels: Any
    classes: list[str]
    transform: Any

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        """The untransformed RGB image at ``index`` (for pictures in reports)."""
        raise NotImplementedError(f"{type(self).__name__} must define load_image")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(classes)``."""
        return len(self.classes)
