"""The serve tests' shared glyph index: built once per test process."""

from __future__ import annotations

from pathlib import Path

import pytest
from _serve_helpers import build_index, glyph_checkpoint, glyph_folder


@pytest.fixture(scope="session")
def glyph_index(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(images folder, checkpoint, index folder): the glyph train split's images as files,
    an untrained GlyphNet checkpoint, and their index (labels from folders). Tests that change
    the index copy it first."""
    root = tmp_path_factory.mktemp("glyph-index")
    images = glyph_folder(root)
    checkpoint = glyph_checkpoint(root / "run")
    return images, checkpoint, build_index(images, checkpoint, root / "idx")
