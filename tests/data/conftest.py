"""Fixtures for the data tests: tiny image writers and a session-wide glyph render.

Helpers are fixtures (not importable functions) so the test modules need no sys.path tricks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _class_colour(c: int) -> tuple[int, int, int]:
    return ((c * 37) % 200 + 20, (c * 91) % 200 + 20, (c * 53) % 200 + 20)


def _write_image(
    path: Path, colour: tuple[int, int, int] = (10, 20, 30), mode: str = "RGB"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", (9, 7), colour[0]) if mode == "L" else Image.new("RGB", (9, 7), colour)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, format="JPEG", quality=95)
    else:
        img.save(path)
    return path


@pytest.fixture
def class_colour() -> Callable[[int], tuple[int, int, int]]:
    """A distinct solid colour per class id, stable under JPEG (to check which file was read)."""
    return _class_colour


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, colour=(r, g, b), mode="RGB"|"L")``: a 9 x 7 solid image."""
    return _write_image


@pytest.fixture
def mean_colour() -> Callable[[Image.Image], np.ndarray]:
    return lambda img: np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0)


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the default 32 px glyph render (rendered once per session)."""
    from rankedlist.data import GlyphDataset

    cache = tmp_path_factory.mktemp("glyph-cache")
    GlyphDataset("train", cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def glyph_splits(glyph_cache: Path):
    """The default glyph train and test splits, read from the session cache."""
    from rankedlist.data import GlyphDataset

    return GlyphDataset("train", cache_dir=glyph_cache), GlyphDataset("test", cache_dir=glyph_cache)
