"""The embedded glyph dataset: splits, ambiguity removal, rendering rules and the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rankedlist.data.glyphs as glyphs_mod
from rankedlist.data import GlyphDataset, build_transform, get_dataset, glyph_dropped_classes
from rankedlist.data.glyph_font_coverage import default_fonts_dir
from rankedlist.data.glyph_rendering import render_font


def mean_ink_distances(ds_list) -> tuple[np.ndarray, list[str]]:
    """Normalised L1 between the per-class mean ink images (an independent numpy reference)."""
    means, names = [], []
    for ds in ds_list:
        ink = 1.0 - ds.images.reshape(len(ds), -1) / 255.0
        for c in range(len(ds.classes)):
            means.append(ink[ds.labels == c].mean(axis=0))
            names.append(ds.classes[c])
    from scipy.spatial.distance import cdist

    m = np.stack(means)
    mass = m.sum(axis=1)
    d = cdist(m, m, "cityblock") / (mass[:, None] + mass[None, :])
    np.fill_diagonal(d, np.inf)
    return d, names


def test_splits_are_class_disjoint_and_sized(glyph_splits) -> None:
    train, test = glyph_splits
    assert set(train.classes).isdisjoint(test.classes)
    assert 150 <= len(train.classes) + len(test.classes) <= 200
    assert abs(len(train.classes) - len(test.classes)) <= 1
    for ds in (train, test):
        assert ds.labels.dtype == np.int64
        np.testing.assert_array_equal(np.unique(ds.labels), np.arange(len(ds.classes)))
        assert np.bincount(ds.labels).min() >= 8  # min_instances
        assert ds.images.shape[1:] == (32, 32) and ds.images.dtype == np.uint8
        assert len(ds.fonts) == len(ds)
    # the fixed rule: sorted kept classes alternate train / test
    kept = sorted(train.classes + test.classes)
    assert train.classes == kept[0::2] and test.classes == kept[1::2]
    # every script is on both sides
    for ds in (train, test):
        cps = [ord(c) for c in ds.classes]
        assert any(c < 0x80 for c in cps) and any(0x391 <= c <= 0x3C9 for c in cps)
        assert any(0x401 <= c <= 0x451 for c in cps)


def test_no_near_identical_class_means(glyph_splits, glyph_cache: Path) -> None:
    d, names = mean_ink_distances(glyph_splits)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    assert d[i, j] > 0.015, f"{names[i]!r} and {names[j]!r} look the same on average"
    # the check has teeth: without the ambiguity rule, homoglyphs (A / Α / А) come back
    everything = [
        GlyphDataset(s, cache_dir=glyph_cache, ambiguity_fraction=1.01) for s in ("train", "test")
    ]
    d_all, _ = mean_ink_distances(everything)
    assert d_all.min() < 0.015


def test_dropped_classes_are_the_homoglyphs(glyph_splits, glyph_cache: Path) -> None:
    train, test = glyph_splits
    dropped = glyph_dropped_classes(cache_dir=glyph_cache)
    assert dropped == train.dropped
    by_char = {d["char"]: d for d in dropped}
    for gone, kept in (("Α", "A"), ("А", "A"), ("а", "a"), ("ο", "o"), ("о", "o"), ("Р", "P")):
        assert by_char[gone]["similar_to"] == kept
        assert "fonts that render both" in by_char[gone]["reason"]
    kept = set(train.classes) | set(test.classes)
    assert kept.isdisjoint(by_char)
    # characters that differ only in size or position stay apart
    assert {"-", "_", ".", ",", "'", "`", "o", "O", "c", "C", "l", "I", "|", "0"} <= kept


def test_cmap_check_excludes_wrong_glyphs(glyph_splits) -> None:
    train, test = glyph_splits
    fonts = set(train.font_names)
    assert "LastResortHE-Regular.ttf" not in fonts and "cmex10.ttf" not in fonts
    assert not any(f.startswith("STIXSiz") for f in fonts)
    assert {"DejaVuSans.ttf", "STIXGeneral.ttf", "cmr10.ttf"} <= fonts
    for ds in (train, test):
        for i in range(len(ds)):
            ch = ds.classes[ds.labels[i]]
            # the TeX text fonts map '<' to an inverted exclamation mark and '_' to a dot accent
            if ch in '<>_{}|\\"' and ds.fonts[i] in ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf"):
                pytest.fail(f"{ch!r} rendered from {ds.fonts[i]}, whose slot holds another glyph")


def test_fixed_em_box_keeps_position(glyph_splits) -> None:
    train, test = glyph_splits

    def ink_row(ch: str, font: str = "DejaVuSans.ttf") -> float:
        ds = train if ch in train.classes else test
        i = next(
            i for i in range(len(ds)) if ds.classes[ds.labels[i]] == ch and ds.fonts[i] == font
        )
        ink = 255.0 - ds.images[i]
        return float((ink.sum(axis=1) * np.arange(ink.shape[0])).sum() / ink.sum())

    assert ink_row("_") > ink_row(".") > ink_row("-") > ink_row("'")
    assert ink_row(",") > ink_row(".")  # the comma hangs below the baseline


def test_items_are_rgb_and_transformable(glyph_splits) -> None:
    train, _ = glyph_splits
    img = train.load_image(0)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 2]).all() and arr.max() == 255 and arr.min() < 64
    train.transform = build_transform("glyphs", train=False)
    try:
        x, y = train[0]
    finally:
        train.transform = None
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and y == train.labels[0]
    np.testing.assert_allclose(x[0].numpy(), arr[..., 0] / 127.5 - 1.0, atol=1e-6)


def test_cache_hit_skips_rendering(glyph_cache: Path, glyph_splits, monkeypatch) -> None:
    assert list((glyph_cache / "glyphs").glob("glyphs-32px-*.npz"))

    def fail(*args, **kwargs):
        raise AssertionError("the renderer ran although the cache holds this configuration")

    # the render cache (rankedlist.data.glyphs) calls render_font through its own namespace
    monkeypatch.setattr(glyphs_mod, "render_font", fail)
    again = get_dataset("glyphs", glyph_cache, "test")  # root is the cache folder for glyphs
    np.testing.assert_array_equal(again.images, glyph_splits[1].images)
    assert again.classes == glyph_splits[1].classes
    with pytest.raises(AssertionError, match="renderer ran"):  # another size is not cached
        GlyphDataset("test", cache_dir=glyph_cache, image_size=24)


def test_render_is_deterministic_and_cache_faithful(glyph_splits) -> None:
    train, _ = glyph_splits
    path = default_fonts_dir() / "DejaVuSerif-Italic.ttf"
    chars = "".join(train.classes)
    rendered_chars, ink = render_font(path, chars, 32)
    _, ink2 = render_font(path, chars, 32)
    np.testing.assert_array_equal(ink, ink2)
    assert rendered_chars == list(chars)  # DejaVu covers every kept class
    for i in range(len(train)):
        if train.fonts[i] == "DejaVuSerif-Italic.ttf":
            j = rendered_chars.index(train.classes[train.labels[i]])
            np.testing.assert_array_equal(train.images[i], 255 - ink[j])


@pytest.fixture
def three_fonts(tmp_path: Path) -> Path:
    src = default_fonts_dir()
    folder = tmp_path / "fonts"
    folder.mkdir()
    for name in ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneral.ttf"):
        os.symlink(src / name, folder / name)
    (folder / "._DejaVuSans.ttf").write_bytes(b"resource fork")
    (folder / "readme.txt").write_text("not a font")
    return folder


def test_fonts_dir_option(three_fonts: Path, tmp_path: Path) -> None:
    kw = {
        "fonts_dir": three_fonts,
        "characters": "ABCDabcd-_.,ΑΒαβ",
        "min_instances": 2,
        "image_size": 16,
        "use_cache": False,
    }
    train = GlyphDataset("train", **kw)
    test = GlyphDataset("test", **kw)
    assert train.font_names == ["DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneral.ttf"]
    assert np.bincount(train.labels).tolist() == [3] * len(train.classes)
    assert train.images.shape[1:] == (16, 16)
    kept = sorted(train.classes + test.classes)
    assert "Α" not in kept and "Β" not in kept and "α" in kept  # homoglyphs of A, B dropped
    assert {d["char"] for d in train.dropped} == {"Α", "Β"}
    again = GlyphDataset("train", **kw)
    np.testing.assert_array_equal(again.images, train.images)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        GlyphDataset(fonts_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="min_instances"):
        GlyphDataset(**{**kw, "min_instances": 4})


def test_glyph_val_fraction(glyph_cache: Path, glyph_splits) -> None:
    train_all, test = glyph_splits
    train = GlyphDataset("train", cache_dir=glyph_cache, val_fraction=0.25)
    val = GlyphDataset("val", cache_dir=glyph_cache, val_fraction=0.25)
    assert set(train.classes).isdisjoint(val.classes)
    assert sorted(train.classes + val.classes) == sorted(train_all.classes)
    assert len(val.classes) == len(train_all.classes) // 4
    assert set(val.classes).isdisjoint(test.classes)


def test_root_must_exist_and_is_not_created(tmp_path: Path) -> None:
    root = tmp_path / "data" / "glyphs-root"
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("glyphs", root, "train")
    assert str(err.value) == (
        f"glyphs: root {root} is not an existing folder. The glyphs are rendered from the fonts "
        "inside matplotlib and need no root; a root only says where to cache the renders "
        f"({root / 'glyphs'}). Create the folder, or leave root unset to cache in "
        f"{glyphs_mod.default_cache_dir() / 'glyphs'}."
    )
    assert not (tmp_path / "data").exists()


def test_existing_root_holds_the_cache(tmp_path: Path) -> None:
    # an existing root is the cache folder: its glyphs/ sub-folder is created and filled
    root = tmp_path / "cache"
    root.mkdir()
    kw = {"characters": "ABCDabcd", "min_instances": 2, "image_size": 16}
    get_dataset("glyphs", root, "train", **kw)
    assert [p.suffix for p in sorted((root / "glyphs").iterdir())] == [".json", ".npz"]
