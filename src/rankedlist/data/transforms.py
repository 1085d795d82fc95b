"""Input pipelines: the paper's BN-Inception protocol, the modern ImageNet one and the glyphs'.

``build_transform(style, train, image_size=None, mean=None, std=None)`` returns a
``torchvision.transforms.Compose`` taking an RGB ``PIL.Image`` to a float tensor (3, S, S):

* ``"bninception"`` (the CVPR 2019 Caffe code): crop to the non-white bounding box padded by 15 px,
  resize the long side to 256 and pad to 256 x 256 with white; train: random horizontal flip and
  random 227 crop; test: centre 227 crop. Output channels in BGR order, 0-255, minus the mean
  (104, 117, 123), no std scaling. ``image_size`` is the crop side (default 227); the canvas
  scales with it (256/227).
* ``"imagenet"``: train: RandomResizedCrop(224), horizontal flip; test: resize the short side to
  256 and centre crop 224; then ``(x - mean) / std`` with the model's own ``mean``/``std`` (its
  ``input_mean``/``input_std``: what its weights were trained with), ImageNet's when not given.
  ``image_size`` is the crop side (default 224).
* ``"glyphs"``: train: small random shifts (6 %), scale (0.9-1.1) and rotation (8 degrees),
  white fill; test: none. Then ToTensor and normalisation around 0.5 (``(x - 0.5) / 0.5``).
  ``image_size`` resizes when given (the glyphs are rendered at their own size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "BNINCEPTION_MEAN_BGR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropNonWhite",
    "ResizeLongSidePad",
    "GlyphsToTensor",
    "ToBGR255MinusMean",
    "build_batch_augment",
    "build_transform",
    "normalisation",
]

BNINCEPTION_MEAN_BGR = (104.0, 117.0, 123.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STYLES = ("bninception", "imagenet", "glyphs")


class CropNonWhite:
    """Crop to the bounding box of the non-white pixels, padded by ``margin`` pixels.

    SOP and In-Shop product shots sit on white; the paper's code crops them first. An image with no
    pixel darker than ``threshold`` in any channel is returned unchanged.
    """

    def __init__(self, margin: int = 15, threshold: int = 250) -> None:
        self.margin, self.threshold = margin, threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        arr = np.asarray(img.convert("RGB"))
        mask = (arr < self.threshold).any(axis=2)
        if not mask.any():
            return img
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        h, w = mask.shape
        box = (
            max(int(cols[0]) - self.margin, 0),
            max(int(rows[0]) - self.margin, 0),
            min(int(cols[-1]) + 1 + self.margin, w),
            min(int(rows[-1]) + 1 + self.margin, h),
        )
        return img.crop(box)

    def __repr__(self) -> str:
        return f"CropNonWhite(margin={self.margin}, threshold={self.threshold})"


class ResizeLongSidePad:
    """Resize so the long side is ``size`` and pad the short side to a ``size`` square (centred)."""

    def __init__(self, size: int, fill: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.size, self.fill = size, fill

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        scale = self.size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = img.resize((nw, nh), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (self.size, self.size), self.fill)
        canvas.paste(resized, ((self.size - nw) // 2, (self.size - nh) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"ResizeLongSidePad(size={self.size}, fill={self.fill})"


class ToBGR255MinusMean:
    """RGB PIL image -> float tensor (3, H, W) in BGR order, 0-255, minus the BGR mean (Caffe)."""

    def __init__(self, mean_bgr: tuple[float, float, float] = BNINCEPTION_MEAN_BGR) -> None:
        self.mean_bgr = mean_bgr
        self._mean = torch.tensor(mean_bgr, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)  # H, W, RGB
        bgr = torch.from_numpy(np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1)))
        return bgr - self._mean

    def __repr__(self) -> str:
        return f"ToBGR255MinusMean(mean_bgr={self.mean_bgr})"


def build_transform(
    style: str,
    train: bool,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable:
    """The input pipeline ``style`` (``"bninception"``, ``"imagenet"`` or ``"glyphs"``).

    Args:
        style: which protocol (see the module docstring).
        train: the training pipeline (random augmentation) or the deterministic test one.
        image_size: the network input side; ``None`` takes the style's default (227, 224, or the
            glyphs' own size).
        mean, std: the ``imagenet`` style's per-channel (RGB, 0-1 scale) normalisation, the
            model's ``input_mean``/``input_std``; ``None`` takes ImageNet's. The other styles
            ignore them (see below).

    Raises:
        ValueError: an unknown style, or a mean/std that is not three finite numbers (std > 0).
    """
    from torchvision import transforms as T  # torchvision import is slow; only when building

    # bninception (the paper's BGR 0-255 minus its mean) and glyphs ([-1, 1]) fix their own
    # normalisation as part of the protocol, whatever the backbone: their models were always
    # trained and evaluated with it, so a mean/std passed along from a model is ignored and the
    # checkpoints of those styles keep their inputs.
    if style == "bninception":
        crop = image_size or 227
        canvas = round(crop * 256 / 227)
        steps: list[Callable] = [CropNonWhite(15), ResizeLongSidePad(canvas)]
        if train:
            steps += [T.RandomHorizontalFlip(), T.RandomCrop(crop)]
        else:
            steps += [T.CenterCrop(crop)]
        return T.Compose([*steps, ToBGR255MinusMean()])
    if style == "imagenet":
        crop = image_size or 224
        if train:
            steps = [T.RandomResizedCrop(crop), T.RandomHorizontalFlip()]
        else:
            steps = [T.Resize(round(crop * 256 / 224)), T.CenterCrop(crop)]
        mean, std = normalisation(mean, std)
        return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
    if style == "glyphs":
        if not train:
            return GlyphsToTensor(image_size)
        steps = [T.Resize((image_size, image_size))] if image_size else []
        steps.append(T.RandomAffine(**_GLYPH_AFFINE, fill=255))
        return T.Compose([*steps, T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    raise ValueError(f"unknown transform style {style!r}; use one of {', '.join(STYLES)}")


def normalisation(
    mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The ``imagenet`` style's ``(mean, std)``: each given one checked, ImageNet's for a None.

    Raises ValueError unless each is three finite numbers and every std is positive.
    """
    return _channels("mean", mean, IMAGENET_MEAN), _channels("std", std, IMAGENET_STD)


def _channels(
    what: str, values: Sequence[float] | None, default: tuple[float, float, float]
) -> tuple[float, float, float]:
    if values is None:
        return default
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(
            f"the input normalisation's {what} must be three finite numbers (R, G, B on the 0-1 "
            f"scale), got {values!r}; check the model's input_{what}"
        )
    if what == "std" and min(out) <= 0:
        raise ValueError(
            f"the input normalisation's std must be positive, got {values!r}; check the "
            "model's input_std"
        )
    return out  # type: ignore[return-value]


# The glyphs' augmentation, shared by the per-image and the batched pipelines.
_GLYPH_AFFINE = {"degrees": 8, "translate": (0.06, 0.06), "scale": (0.9, 1.1)}


class GlyphsToTensor:
    """The glyph test pipeline: resize (when ``size`` is given and differs), then a float tensor
    (3, S, S) normalised around 0.5. Datasets that hold their images as arrays (the glyphs) make
    whole batches at once when their transform is this one."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"GlyphsToTensor(size={self.size})"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.size is not None and image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        return self.from_uint8(np.asarray(image.convert("RGB"))[None])[0]

    @staticmethod
    def from_uint8(images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) or grey (B, H, W) uint8 arrays to (B, 3, H, W) floats in [-1, 1]."""
        # The arithmetic of ToTensor + Normalize(0.5, 0.5), so the values are the same bits.
        x = (
            torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
            .float()
            .div_(255)
            .sub_(0.5)
            .div_(0.5)
        )
        if x.ndim == 3:
            return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        return x.permute(0, 3, 1, 2).contiguous()


def build_batch_augment(style: str, train: bool) -> Callable | None:
    """The training augmentation of ``style`` applied to a whole batch, or None (there is none,
    or ``train`` is False). Called as ``augment(images, seeds)``, one seed per image."""
    if style not in STYLES:
        raise ValueError(f"unknown transform style {style!r}; valid: {', '.join(STYLES)}")
    if style != "glyphs" or not train:
        return None
    from rankedlist.data.batch_augment import BatchRandomAffine

    a = _GLYPH_AFFINE
    return BatchRandomAffine(a["degrees"], a["translate"][0], a["scale"], fill=1.0)
