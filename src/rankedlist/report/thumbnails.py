"""Small JPEG thumbnails embedded in ``report.html`` as ``data:`` URIs (no sibling files, no
network: the page opens from a laptop's disk or an artifact store as one file)."""

from __future__ import annotations

import base64
import io
from typing import Any

#: Thumbnail side in pixels for the lists (hardest queries, pairs, classes) and for the map.
LIST_SIZE = 72
MAP_SIZE = 48
_QUALITY = 72  # JPEG quality: small files, faces and products still recognisable


def thumbnail_uri(image: Any, size: int) -> str:
    """``image`` (a PIL image) fitted into ``size x size`` (aspect kept), as a JPEG data URI."""
    from PIL import Image, ImageOps

    image = image.convert("RGB")
    fitted = ImageOps.contain(image, (size, size), method=Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    fitted.save(buffer, format="JPEG", quality=_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ThumbnailStore:
    """Thumbnails by dataset row and size, each image loaded once (``dataset.load_image``).

    With ``dataset=None`` every lookup gives ``None`` and the page shows names only.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.uris: dict[str, str] = {}

    def key(self, row: int, size: int = LIST_SIZE) -> str | None:
        """The id of row ``row``'s thumbnail in :attr:`uris` (made on first use), or ``None``."""
        if self.dataset is None:
            return None
        key = f"{int(row)}" if size == LIST_SIZE else f"{int(row)}s{size}"
        if key not in self.uris:
            self.uris[key] = thumbnail_uri(self.dataset.load_image(int(row)), size)
        return key
