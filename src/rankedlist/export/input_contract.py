"""The input contract of an exported model: how to turn an image into the tensor it expects.

An exported embedding model is only useful with the preprocessing it was trained and tested
with. :func:`input_contract` writes that down, for the test-time pipeline of each
``rankedlist.data.build_transform`` style, as a JSON-serialisable dict that travels with the
model (ONNX ``metadata_props`` key :data:`METADATA_KEY`, a TorchScript extra file, and a
``FILE.json`` sidecar):

* ``steps``: the geometric steps on the decoded RGB image, in order, each with its parameters
  and a ``rule`` in words (resizes are PIL bilinear, which antialiases when shrinking);
* ``channel_order`` (``RGB`` or ``BGR``), ``scale`` (``1/255`` or ``1``), ``mean`` and ``std``
  (in ``channel_order``): ``x[c] = (pixel[c] * scale - mean[c]) / std[c]``;
* ``input``: name, layout ``NCHW``, dtype ``float32``, shape ``[batch, 3, H, W]``; ``output``:
  name and shape ``[batch, D]``, L2-normalised rows (cosine similarity = dot product).

:func:`prepare_image` is a reference implementation of a contract in numpy and PIL only,
without torch or rankedlist's transforms: what a consumer in another code base reproduces. The
tests check that it equals rankedlist's own preprocessing on real images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONTRACT_FORMAT",
    "CONTRACT_VERSION",
    "METADATA_KEY",
    "input_contract",
    "prepare_image",
    "read_sidecar",
    "sidecar_path",
]

CONTRACT_FORMAT = "rankedlist-input-contract"
CONTRACT_VERSION = 1
METADATA_KEY = "rankedlist.input_contract"
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"

_DECODE = (
    "decode the file to RGB 8-bit; transparent pixels are composited over white; EXIF "
    "orientation is not applied"
)
_CENTER_CROP_RULE = (
    "crop size x size at top = round((H - size) / 2), left = round((W - size) / 2), Python "
    "round (half to even); an image smaller than size is first padded with zeros (black) "
    "around it to size"
)


def input_contract(
    style: str,
    image_size: int,
    embedding_dim: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The contract of ``build_transform(style, train=False, image_size, mean, std)`` feeding a
    model with ``embedding_dim`` outputs (its fused embedding size).

    ``mean``/``std`` are the model's ``input_mean``/``input_std``: the ``imagenet`` style records
    them (ImageNet's when None); ``bninception`` and ``glyphs`` record their own, as
    ``build_transform`` uses.
    """
    from rankedlist.data.transforms import (
        BNINCEPTION_MEAN_BGR,
        IMAGENET_MEAN,
        IMAGENET_STD,
        normalisation,
    )

    size = int(image_size)
    if style == "bninception":
        canvas = round(size * 256 / 227)
        steps = [
            {
                "op": "crop_non_white",
                "threshold": 250,
                "margin": 15,
                "rule": "crop to the bounding box of the pixels with any channel < threshold, "
                "grown by margin on every side and clipped to the image; unchanged when every "
                "pixel is at least threshold in all channels",
            },
            {
                "op": "resize_long_side_pad",
                "size": canvas,
                "interpolation": "bilinear",
                "fill": [255, 255, 255],
                "rule": "resize (bilinear) so the long side is size and the short side "
                "max(1, round(short * size / long)), then paste it on a size x size canvas of "
                "fill at ((size - w) // 2, (size - h) // 2)",
            },
            {"op": "center_crop", "size": size, "rule": _CENTER_CROP_RULE},
        ]
        normalise = {"channel_order": "BGR", "scale": 1.0, "mean": list(BNINCEPTION_MEAN_BGR)}
        normalise["std"] = [1.0, 1.0, 1.0]
        summary = (
            f"white-background crop (margin 15), long side to {canvas} padded white to "
            f"{canvas} x {canvas}, centre crop {size}; BGR, 0-255 minus mean "
            f"{tuple(BNINCEPTION_MEAN_BGR)}"
        )
    elif style == "imagenet":
        short = round(size * 256 / 224)
        steps = [
            {
                "op": "resize_short_side",
                "size": short,
                "interpolation": "bilinear",
                "rule": "resize (bilinear) so the short side is size and the long side "
                "floor(long * size / short)",
            },
            {"op": "center_crop", "size": size, "rule": _CENTER_CROP_RULE},
        ]
        rgb_mean, rgb_std = normalisation(mean, std)
        normalise = {
            "channel_order": "RGB",
            "scale": 1 / 255,
            "mean": list(rgb_mean),
            "std": list(rgb_std),
        }
        whose = (
            "ImageNet" if (rgb_mean, rgb_std) == (IMAGENET_MEAN, IMAGENET_STD) else "the model's"
        )
        summary = (
            f"short side to {short}, centre crop {size}; RGB, /255, {whose} mean {rgb_mean} and "
            f"std {rgb_std}"
        )
    elif style == "glyphs":
        steps = [
            {
                "op": "resize",
                "height": size,
                "width": size,
                "interpolation": "bilinear",
                "rule": "resize (bilinear) to exactly height x width, aspect ratio not kept",
            }
        ]
        normalise = {"channel_order": "RGB", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}
        summary = f"resize to {size} x {size}; RGB, /255, mean 0.5, std 0.5"
    else:
        raise ValueError(
            f"unknown input style {style!r}: rankedlist exports bninception, imagenet and "
            "glyphs models"
        )
    return {
        "format": CONTRACT_FORMAT,
        "version": CONTRACT_VERSION,
        "transform_style": style,
        "image_size": size,
        "decode": _DECODE,
        "steps": steps,
        **normalise,
        "formula": "x[c] = (pixel[c] * scale - mean[c]) / std[c], channels in channel_order",
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "shape": ["batch", 3, size, size],
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", int(embedding_dim)],
            "normalized": True,
            "similarity": "cosine (the dot product of two outputs)",
        },
        "summary": summary,
    }


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """Where the JSON sidecar of an exported model lives: ``FILE`` + ``.json``."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def read_sidecar(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar's contract, or ``None`` when there is none; a damaged one is a ValueError."""
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        contract = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); export the model again with `rankedlist export`"
        ) from err
    check_contract(contract, str(path))
    return contract


def embedded_contract(
    path: str | os.PathLike, text: str | bytes, *, inside: str, hint: str
) -> dict[str, Any]:
    """The contract an exported file carries (``text``, its JSON, empty when it has none), else
    its ``FILE.json`` sidecar; ``inside`` names where in the file it is kept (an ONNX metadata
    key, an extra file of a ``.pt2`` or TorchScript archive), for the messages. Raises
    ValueError, naming ``path`` and ``hint``, when neither has one or it is damaged."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text:
        try:
            contract = json.loads(text)
        except ValueError as err:
            raise ValueError(
                f"{path} has a damaged input contract in {inside} ({err}); {hint}"
            ) from err
        return check_contract(contract, f"{path} ({inside})")
    contract = read_sidecar(path)
    if contract is None:
        raise ValueError(
            f"{path} carries no rankedlist input contract (no {inside} and no "
            f"{sidecar_path(path).name} beside it), so how to prepare its images is unknown; "
            f"{hint}"
        )
    return contract


def check_contract(contract: Any, where: str) -> dict[str, Any]:
    """``contract`` if it is a rankedlist input contract this version understands."""
    if not isinstance(contract, dict) or contract.get("format") != CONTRACT_FORMAT:
        raise ValueError(
            f"{where} holds no rankedlist input contract (no format {CONTRACT_FORMAT!r}); "
            "export the model with `rankedlist export`"
        )
    if not isinstance(contract.get("version"), int) or contract["version"] > CONTRACT_VERSION:
        raise ValueError(
            f"{where} holds an input contract of version {contract.get('version')!r}, newer "
            "than this rankedlist understands; upgrade rankedlist"
        )
    needed = ("transform_style", "image_size", "steps", "channel_order", "scale", "mean", "std")
    missing = [key for key in needed if key not in contract]
    if missing:
        raise ValueError(
            f"{where} has an input contract without {', '.join(missing)}: it is damaged; "
            "export the model again with `rankedlist export`"
        )
    return contract


# --------------------------------------------------------------------------- reference


def prepare_image(image: Any, contract: dict[str, Any]) -> np.ndarray:
    """The ``(3, H, W)`` float32 model input of one image, following ``contract`` alone.

    ``image`` is a path or a ``PIL.Image``. Only PIL and numpy are used, step by step as the
    contract words them, so this doubles as the recipe for a consumer in another code base.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = _to_rgb(im)
    else:
        image = _to_rgb(image)
    for step in contract["steps"]:
        image = _STEPS[step["op"]](image, step)
    arr = np.asarray(image, dtype=np.float32)  # H, W, RGB
    if contract["channel_order"] == "BGR":
        arr = arr[:, :, ::-1]
    mean = np.asarray(contract["mean"], dtype=np.float32)
    std = np.asarray(contract["std"], dtype=np.float32)
    arr = (arr * np.float32(contract["scale"]) - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def _to_rgb(im: Any) -> Any:
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB")
    return im.convert("RGB")


def _crop_non_white(im: Any, step: dict[str, Any]) -> Any:
    arr = np.asarray(im)
    dark = (arr < step["threshold"]).any(axis=2)
    if not dark.any():
        return im
    rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    m = step["margin"]
    box = (
        max(int(cols[0]) - m, 0),
        max(int(rows[0]) - m, 0),
        min(int(cols[-1]) + 1 + m, im.width),
        min(int(rows[-1]) + 1 + m, im.height),
    )
    return im.crop(box)


def _resize_long_side_pad(im: Any, step: dict[str, Any]) -> Any:
    from PIL import Image

    size = step["size"]
    w, h = im.size
    nw, nh = max(1, round(w * size / max(w, h))), max(1, round(h * size / max(w, h)))
    canvas = Image.new("RGB", (size, size), tuple(step["fill"]))
    canvas.paste(
        im.resize((nw, nh), Image.Resampling.BILINEAR), ((size - nw) // 2, (size - nh) // 2)
    )
    return canvas


def _resize_short_side(im: Any, step: dict[str, Any]) -> Any:
    from PIL import Image

    size = step["size"]
    w, h = im.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return im.resize(new, Image.Resampling.BILINEAR)


def _resize(im: Any, step: dict[str, Any]) -> Any:
    from PIL import Image

    return im.resize((step["width"], step["height"]), Image.Resampling.BILINEAR)


def _center_crop(im: Any, step: dict[str, Any]) -> Any:
    from PIL import Image

    size = step["size"]
    if im.width < size or im.height < size:
        padded = Image.new("RGB", (max(im.width, size), max(im.height, size)), (0, 0, 0))
        padded.paste(im, ((padded.width - im.width) // 2, (padded.height - im.height) // 2))
        im = padded
    top, left = round((im.height - size) / 2), round((im.width - size) / 2)
    return im.crop((left, top, left + size, top + size))


_STEPS = {
    "crop_non_white": _crop_non_white,
    "resize_long_side_pad": _resize_long_side_pad,
    "resize_short_side": _resize_short_side,
    "resize": _resize,
    "center_crop": _center_crop,
}
