"""Thumbnails of the index's items, by item id only.

A request names a row of the index (``/items/12/thumbnail``), never a path: the file read is
the one the index records for that row, so no path from a request reaches the file system.
Anything but a row number of the current index is :class:`ItemNotFound`.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

__all__ = ["ItemNotFound", "ThumbnailCache", "parse_item_id"]

_ROW = re.compile(r"[0-9]{1,12}")


class ItemNotFound(LookupError):
    """The id is not a row of the index, or its image file is gone."""


def parse_item_id(item_id: str, size: int) -> int:
    """``item_id`` as a row of an index of ``size`` items, or :class:`ItemNotFound`.

    Only plain decimal digits name a row: a path, a sign, an encoded character or a number
    out of range does not."""
    if not _ROW.fullmatch(item_id) or int(item_id) >= size:
        raise ItemNotFound(
            f"no item {item_id!r} in this index: item ids are the row numbers 0 to {size - 1} "
            "that /search returns"
        )
    return int(item_id)


class ThumbnailCache:
    """PNG thumbnails (at most ``size`` px a side) of recently asked items, ``capacity`` kept.

    The file of a row is the index's ``item_path(row)``; an index without that method (a
    backend that returns paths only with its matches) has thumbnails for the rows this server
    answered with (:meth:`remember`, the last ``capacity * 20`` of them)."""

    def __init__(self, size: int = 160, capacity: int = 512) -> None:
        self.size, self.capacity = size, capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._answered: OrderedDict[int, Path] = OrderedDict()
        self._answered_by: int | None = None  # id() of the index the rows came from
        self._lock = threading.Lock()

    def remember(self, index: Any, matches: list[Any]) -> None:
        """Note the rows and paths ``index`` answered with (for an index without item_path)."""
        if hasattr(index, "item_path"):
            return
        with self._lock:
            if self._answered_by != id(index):
                self._answered.clear()
                self._answered_by = id(index)
            for m in matches:
                self._answered[int(m.index)] = Path(m.path)
                self._answered.move_to_end(int(m.index))
            while len(self._answered) > self.capacity * 20:
                self._answered.popitem(last=False)

    def _path(self, index: Any, row: int) -> Path:
        if hasattr(index, "item_path"):
            try:
                return Path(index.item_path(row))
            except IndexError:  # a row the collection no longer holds
                raise ItemNotFound(f"no item {row} in this index") from None
        with self._lock:
            path = self._answered.get(row) if self._answered_by == id(index) else None
        if path is None:
            raise ItemNotFound(f"item {row} has not been in an answer of this server lately")
        return path

    def thumbnail(self, index: Any, item_id: str) -> bytes:
        """The PNG thumbnail of row ``item_id`` of ``index``."""
        from rankedlist.data import read_rgb

        row = parse_item_id(item_id, len(index))
        path = self._path(index, row)
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:
            raise ItemNotFound(f"item {row}'s image file is no longer on the server") from None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            image = read_rgb(path)
        except OSError:
            raise ItemNotFound(f"item {row}'s image file cannot be read on the server") from None
        image.thumbnail((self.size, self.size))
        out = io.BytesIO()
        image.save(out, format="PNG")
        data = out.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data
