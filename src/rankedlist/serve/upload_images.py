"""Uploaded bytes -> RGB images, within the server's limits.

Every way an upload can be wrong is a :class:`UploadRejected` with an HTTP status and one line
naming the upload and the fix: empty (400), over the byte limit (413), not an image PIL can
decode (415), over the pixel limit (413, checked from the header before any pixel is decoded,
and PIL's own decompression-bomb guard set to the same limit). A server never answers a bad
upload with a 500.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = ["UploadLimits", "UploadRejected", "quiet_pixel_warnings", "decode_upload"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """What one request may carry.

    ``max_image_bytes``: one uploaded file; ``max_pixels``: one image's width x height;
    ``max_images``: files in one request; ``max_request_bytes``: the whole request body
    (multipart framing included); ``max_k``: neighbours one query may ask for.
    """

    max_image_bytes: int = 10 * MIB
    max_pixels: int = 40_000_000
    max_images: int = 32
    max_request_bytes: int = 64 * MIB
    max_k: int = 100

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_pixels", "max_images", "max_request_bytes", "max_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class UploadRejected(Exception):
    """An upload (or request) the server refuses: ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_upload(data: bytes, name: str, limits: UploadLimits) -> Any:
    """``data`` (one uploaded file called ``name``) decoded to an RGB ``PIL.Image``.

    Decoded as :func:`rankedlist.data.read_rgb` decodes an indexed file (transparent pixels
    over white), so a query uploaded is the query read from disk. Raises
    :class:`UploadRejected`.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadRejected(400, f"upload {name!r} is empty: send the image file's bytes")
    if len(data) > limits.max_image_bytes:
        raise UploadRejected(
            413,
            f"upload {name!r} is {len(data):,} bytes, over this server's limit of "
            f"{limits.max_image_bytes:,} per image: send a smaller image",
        )
    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # PIL's own guard, set explicitly
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > limits.max_pixels:
                raise _too_many_pixels(name, f"{width} x {height} = {width * height:,}", limits)
            return _to_rgb(im)
    except UploadRejected:
        raise
    except Image.DecompressionBombError:  # PIL's own guard, at twice the limit
        raise _too_many_pixels(name, "more than twice that many", limits) from None
    except UnidentifiedImageError:
        raise UploadRejected(
            415, f"upload {name!r} is not an image this server can decode: send a PNG or JPEG"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UploadRejected(
            415, f"upload {name!r} could not be decoded ({reason}): send the whole image file"
        ) from None


def quiet_pixel_warnings() -> None:
    """Once, when a server starts: PIL warns of an image over its guard, which
    :func:`decode_upload` refuses itself (PIL raises only at twice the limit)."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _to_rgb(im: Any) -> Any:
    """``im`` decoded in full as RGB; transparency composited over white as ``read_rgb`` does."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _too_many_pixels(name: str, pixels: str, limits: UploadLimits) -> UploadRejected:
    return UploadRejected(
        413,
        f"upload {name!r} is {pixels} pixels, over this "
        f"server's limit of {limits.max_pixels:,}: send a smaller image",
    )
