"""Image-folder and CSV datasets, the val carve-out rule and the registry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rankedlist.data import (
    CorruptImageError,
    evaluation_splits,
    get_dataset,
    list_datasets,
    read_rgb,
)
from rankedlist.data.splits import val_class_mask


@pytest.fixture
def folder_root(tmp_path: Path, write_image, class_colour) -> Path:
    root = tmp_path / "flat"
    for c, name in enumerate(["apple", "banana", "cherry", "date"], 1):
        for j in range(c + 1):
            write_image(root / name / f"{j}.png", class_colour(c))
        write_image(root / name / "nested" / "deep.jpg", class_colour(c))
        (root / name / f"._{0}.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (root / name / ".DS_Store").write_bytes(b"junk")
        (root / name / "notes.txt").write_text("not an image")
    return root


def test_folder_flat_layout_split_by_sorted_classes(folder_root: Path, class_colour, mean_colour):
    train = get_dataset("folder", folder_root, "train")
    test = get_dataset("folder", folder_root, "test")
    assert train.classes == ["apple", "banana"] and test.classes == ["cherry", "date"]
    # c + 1 images plus nested/deep.jpg per class; ._* / .DS_Store / .txt ignored
    np.testing.assert_array_equal(np.bincount(train.labels), [3, 4])
    np.testing.assert_array_equal(np.bincount(test.labels), [5, 6])
    assert not any(Path(p).name.startswith(".") for p in train.paths + test.paths)
    for ds, offset in ((train, 1), (test, 3)):
        for i in range(len(ds)):
            assert f"/{ds.classes[ds.labels[i]]}/" in ds.paths[i]
            c = ds.labels[i] + offset
            np.testing.assert_allclose(mean_colour(ds[i][0]), class_colour(c), atol=4)
    three_quarters = get_dataset("folder", folder_root, "test", test_fraction=0.25)
    assert three_quarters.classes == ["date"]


def test_folder_explicit_split_folders(tmp_path: Path, write_image) -> None:
    for split, classes in {"train": "abc", "test": "de", "val": "f"}.items():
        for c in classes:
            for j in range(2):
                write_image(tmp_path / split / c / f"{j}.png")
    assert get_dataset("folder", tmp_path, "train").classes == ["a", "b", "c"]
    assert get_dataset("folder", tmp_path, "test").classes == ["d", "e"]
    assert get_dataset("folder", tmp_path, "val").classes == ["f"]
    # with a fraction, val comes from the training classes instead of the val folder
    val = get_dataset("folder", tmp_path, "val", val_fraction=0.34)
    train = get_dataset("folder", tmp_path, "train", val_fraction=0.34)
    assert val.classes == ["c"] and train.classes == ["a", "b"]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        get_dataset("folder", tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        get_dataset("folder", tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        get_dataset("folder", tmp_path, "query")


def test_csv_with_split_column(tmp_path: Path, write_image, class_colour, mean_colour) -> None:
    rows = ["path,label,split,comment"]
    for label, split, k in ((10, "train", 2), (2, "train", 3), (7, "val", 1), (33, "test", 2)):
        for j in range(k):
            write_image(tmp_path / "imgs" / f"{label}_{j}.png", class_colour(label))
            rows.append(f"imgs/{label}_{j}.png,{label},{split},x")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    train = get_dataset("csv", tmp_path / "list.csv", "train")
    assert train.classes == ["2", "10"]  # numeric labels sort numerically
    np.testing.assert_array_equal(np.bincount(train.labels), [3, 2])
    for i in range(len(train)):
        c = int(train.classes[train.labels[i]])
        np.testing.assert_allclose(mean_colour(train[i][0]), class_colour(c), atol=4)
    assert get_dataset("csv", tmp_path / "list.csv", "val").classes == ["7"]
    assert get_dataset("csv", tmp_path / "list.csv", "test").classes == ["33"]
    carved = get_dataset("csv", tmp_path / "list.csv", "val", val_fraction=0.5)
    assert carved.classes == ["10"]  # the second of the sorted training classes 2, 10


def test_csv_without_split_column_and_image_root(tmp_path: Path, write_image) -> None:
    rows = ["label,path"]
    for label in ("cat", "ant", "dog", "bee"):
        write_image(tmp_path / "pics" / f"{label}.png")
        rows.append(f"{label},{label}.png")
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    train = get_dataset("csv", tmp_path / "l.csv", "train", image_root=tmp_path / "pics")
    test = get_dataset("csv", tmp_path / "l.csv", "test", image_root=tmp_path / "pics")
    assert train.classes == ["ant", "bee"] and test.classes == ["cat", "dog"]
    assert Path(train.paths[0]) == tmp_path / "pics" / "ant.png"


def test_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        get_dataset("csv", tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("file,class\na.png,1\n")
    with pytest.raises(ValueError, match="'path' and 'label'"):
        get_dataset("csv", tmp_path / "bad.csv")
    (tmp_path / "split.csv").write_text("path,label,split\na.png,1,training\n")
    with pytest.raises(ValueError, match="training"):
        get_dataset("csv", tmp_path / "split.csv")


def test_read_rgb_modes(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "clear.png")
    Image.new("P", (4, 4), 3).save(tmp_path / "pal.gif")
    assert np.asarray(read_rgb(tmp_path / "grey.png")).tolist() == [[[77] * 3] * 4] * 4
    # transparency composites over white, not the hidden colour
    assert (np.asarray(read_rgb(tmp_path / "clear.png")) == 255).all()
    assert read_rgb(tmp_path / "pal.gif").mode == "RGB"
    (tmp_path / "trunc.png").write_bytes((tmp_path / "grey.png").read_bytes()[:30])
    with pytest.raises(CorruptImageError, match="trunc.png"):
        read_rgb(tmp_path / "trunc.png")


@pytest.mark.parametrize("n", [1, 2, 5, 10, 37, 100])
@pytest.mark.parametrize("f", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_val_class_mask_rule(n: int, f: float) -> None:
    if f > 0 and n == 1:
        with pytest.raises(ValueError, match="no training class"):
            val_class_mask(n, f)
        return
    mask = val_class_mask(n, f)
    expected = 0 if f == 0 else max(1, math.floor(n * f))
    assert mask.sum() == expected and not mask.all()
    # evenly spaced: a brute-force reference of the documented rule
    ref = [math.floor((i + 1) * f) > math.floor(i * f) for i in range(n)]
    if any(ref):
        assert mask.tolist() == ref


def test_val_fraction_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        val_class_mask(10, 1.0)


def test_registry() -> None:
    assert list_datasets() == ["cars196", "csv", "cub200", "folder", "glyphs", "inshop", "sop"]
    assert evaluation_splits("inshop") == ("query", "gallery")
    assert evaluation_splits("cub200") == ("test",)
    with pytest.raises(ValueError, match="available"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="root"):
        get_dataset("cub200")
