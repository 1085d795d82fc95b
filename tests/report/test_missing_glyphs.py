"""A class named in a script the pictures' font lacks (CJK in DejaVu Sans) draws a box and no
"Glyph missing from font" warning; the HTML page keeps the real name."""

from __future__ import annotations

import warnings

from _report_helpers import FakeImageDataset, clustered_embeddings
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

from rankedlist.report.embedding_map import plot_embedding_map
from rankedlist.report.figures import MISSING_GLYPH, drawable
from rankedlist.report.retrieval_grid import plot_retrieval_grid


def test_drawable_replaces_only_what_the_font_lacks():
    font = font_manager.findfont(font_manager.FontProperties())
    charmap = FT2Font(font).get_charmap()
    assert ord("字") not in charmap and ord("Ж") in charmap  # the premise: DejaVu Sans
    assert drawable("Ж字 a✓") == f"Ж{MISSING_GLYPH} a✓"
    assert all(ord(c) in charmap for c in drawable("字形 名前 Ωmega"))


def test_cjk_class_names_draw_without_missing_glyph_warnings(tmp_path):
    x, y = clustered_embeddings(4, 6, seed=1)
    dataset = FakeImageDataset(y)
    dataset.classes = ["字", "形", "名前", "Ωmega"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (a missing glyph) fails the test
        assert plot_retrieval_grid(x, y, dataset, tmp_path / "grid.png", n_queries=4, k=3)
        assert plot_embedding_map(x, y, tmp_path / "map.png", class_names=dataset.classes)
