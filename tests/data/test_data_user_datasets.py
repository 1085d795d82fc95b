"""Image-folder and CSV datasets, the val carve-out rule and the registry."""

from __future__ import annotations

import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rankedlist.data import (
    CorruptImageError,
    MissingImagesError,
    evaluation_splits,
    get_dataset,
    list_datasets,
    read_rgb,
)
from rankedlist.data.image_list_dataset import missing_files
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
    with pytest.raises(ValueError) as err:
        get_dataset("csv", tmp_path / "split.csv")
    assert str(err.value) == (
        f"csv: {tmp_path / 'split.csv'}:2: split 'training' is not train, val or test; fix the "
        "value, or drop the split column for an automatic class-disjoint split"
    )


# The line numbers count the header as line 1, blank lines, and every line of a quoted field
# that spans lines (as an editor shows them).
MALFORMED_CSV = {
    "empty label": (
        "path,label\nimgs/a.png,x\n\nimgs/b.png,\nimgs/c.png,y\n",
        "4: the label of imgs/b.png is empty; give the row a class name or number or delete it",
    ),
    "whitespace label": (
        "path,label\nimgs/a.png,x\nimgs/b.png,  \n",
        "3: the label of imgs/b.png is empty; give the row a class name or number or delete it",
    ),
    "empty path": (
        "path,label\nimgs/a.png,x\n,y\n",
        "3: the path is empty; give the row an image path or delete it",
    ),
    "extra field": (
        "path,label\nimgs/a.png,x\nimgs/b,c.png,y\n",
        "3: the row has 3 field(s), the header 2 (path,label); quote a field that contains a "
        "comma or fix the row",
    ),
    "missing field": (
        "path,label,split\nimgs/a.png,x,train\nimgs/b.png,test\n",
        "3: the row has 2 field(s), the header 3 (path,label,split); quote a field that contains "
        "a comma or fix the row",
    ),
    "after a multi-line field": (
        'path,label\n"imgs/a\nb.png",x\nimgs/c.png,\n',
        "4: the label of imgs/c.png is empty; give the row a class name or number or delete it",
    ),
    "repeated column": (
        "path,label,path\nimgs/a.png,x,y\n",
        "1: the header names ['path'] more than once; rename or delete the repeated columns",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CSV))
def test_csv_malformed_rows_name_file_line_and_fix(tmp_path: Path, case: str) -> None:
    text, message = MALFORMED_CSV[case]
    (tmp_path / "list.csv").write_text(text)
    with pytest.raises(ValueError) as err:
        get_dataset("csv", tmp_path / "list.csv")
    assert str(err.value) == f"csv: {tmp_path / 'list.csv'}:{message}"


def test_csv_not_utf8_names_line(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_bytes(b"path,label\nimgs/a.png,x\nimgs/\xe9t\xe9.png,y\n")
    with pytest.raises(ValueError) as err:
        get_dataset("csv", tmp_path / "list.csv")
    assert str(err.value) == (
        f"csv: {tmp_path / 'list.csv'}:3: not UTF-8 (invalid continuation byte at byte 29); "
        "save the file as UTF-8 (CSV UTF-8 in a spreadsheet)"
    )


def test_csv_byte_order_mark_and_comma_only_rows(tmp_path: Path, write_image) -> None:
    # what a spreadsheet writes: a UTF-8 byte-order mark and padding rows of separators
    for name in ("a", "b"):
        write_image(tmp_path / f"{name}.png")
    (tmp_path / "list.csv").write_text("\ufeffpath,label\na.png,x\n,\nb.png,y\n,\n")
    train = get_dataset("csv", tmp_path / "list.csv", "train")
    test = get_dataset("csv", tmp_path / "list.csv", "test")
    assert train.classes == ["x"] and test.classes == ["y"] and len(train) == len(test) == 1


def _split_csv(tmp_path: Path, write_image, rows: list[str], header="path,label,split") -> Path:
    """``list.csv`` with ``rows`` under ``header``; every listed image exists."""
    for row in rows:
        write_image(tmp_path / row.split(",")[0])
    (tmp_path / "list.csv").write_text("\n".join([header, *rows]) + "\n")
    return tmp_path / "list.csv"


SPLIT_ROWS = [  # lines 2-7: classes 1 and 2 train, 3 val, 4 test
    "imgs/a.png,1,train", "imgs/b.png,1,train", "imgs/c.png,2,train",
    "imgs/d.png,3,val", "imgs/e.png,4,test", "imgs/f.png,4,test",
]  # fmt: skip


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_csv_image_in_two_splits_is_refused_whichever_split_is_loaded(
    tmp_path: Path, write_image, split: str
) -> None:
    # line 9 lists line 3's image again (spelled differently) in the test split
    rows = [*SPLIT_ROWS, "imgs/g.png,4,test", "./imgs//b.png,4,test"]
    csv_path = _split_csv(tmp_path, write_image, rows)
    with pytest.raises(ValueError) as err:
        get_dataset("csv", csv_path, split)
    assert str(err.value) == (
        f"csv: {csv_path}:9: the image ./imgs//b.png is in the test split here and in the train "
        "split on line 3, so it leaks from one to the other; list each image in one split only "
        "(delete one of the two rows)"
    )


def test_csv_image_in_both_automatic_splits_is_refused(tmp_path: Path, write_image) -> None:
    # no split column: classes x, y train and z, w test; a.png is listed under x and under z
    rows = ["a.png,x", "b.png,y", "c.png,z", "a.png,z", "d.png,w"]
    csv_path = _split_csv(tmp_path, write_image, rows, header="path,label")
    with pytest.raises(ValueError) as err:
        get_dataset("csv", csv_path, "train")
    assert str(err.value) == (
        f"csv: {csv_path}:5: the image a.png is in the test split here and in the train split "
        "on line 2, so it leaks from one to the other; list each image in one split only "
        "(delete one of the two rows)"
    )


@pytest.mark.parametrize(
    ("row", "label", "here", "there", "first"),
    [
        ("imgs/x.png,2,test", "2", "test", "train", 4),  # a training class in the test split
        ("imgs/x.png,02,val", "02", "val", "train", 4),  # the same class, as numbers compare
        ("imgs/x.png,4,train", "4", "train", "test", 6),
        ("imgs/x.png,3,test", "3", "test", "val", 5),  # selection on test classes
    ],
)
def test_csv_class_in_two_splits_is_refused(
    tmp_path: Path, write_image, row: str, label: str, here: str, there: str, first: int
) -> None:
    csv_path = _split_csv(tmp_path, write_image, [*SPLIT_ROWS, row])
    for split in ("train", "test"):
        with pytest.raises(ValueError) as err:
            get_dataset("csv", csv_path, split)
        assert str(err.value) == (
            f"csv: {csv_path}:8: class {label!r} is in the {here} split here and in the {there} "
            f"split on line {first}; the splits must be class-disjoint (no class in two of "
            f"train, val and test): give every row of class {label!r} the same split"
        )


def test_csv_image_repeated_within_a_split_warns_with_its_lines(
    tmp_path: Path, write_image
) -> None:
    # 7 repeats in train (lines 8-14: one of them under another label), none in test
    repeats = [f"imgs/{n}.png,{c},train" for n, c in zip("aabcaba", "1112111", strict=True)]
    csv_path = _split_csv(tmp_path, write_image, [*SPLIT_ROWS, *repeats])
    with pytest.warns(UserWarning) as caught:
        train = get_dataset("csv", csv_path, "train")
    assert [str(w.message) for w in caught] == [
        f"csv: {csv_path}: 7 row(s) of the train split list an image already listed (line 8 "
        "repeats line 2, line 9 repeats line 2, line 10 repeats line 3, line 11 repeats line 4, "
        "line 12 repeats line 2 and 2 more); each copy counts as another image of its class, "
        "the others' positive in training and nearest neighbour in evaluation: delete the "
        "repeated rows"
    ]
    assert len(train) == 10  # the copies are kept: a warning, not a change of the data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(get_dataset("csv", csv_path, "test")) == 2  # nothing repeated in test


def test_csv_missing_images_reported_at_construction(tmp_path: Path, write_image) -> None:
    rows = ["path,label"]
    for i in range(9):
        if i in (0, 4):  # 2 of the 9 files exist
            write_image(tmp_path / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{i % 2}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(MissingImagesError) as err:
        get_dataset("csv", tmp_path / "list.csv", "train")  # class 0: rows 0, 2, 4, 6, 8
    first = [f"{tmp_path / 'imgs' / f'{i}.png'} (line {i + 2} of list.csv)" for i in (2, 6, 8)]
    assert str(err.value) == (
        f"csv/train: 3 of 5 image files do not exist: {', '.join(first)}. Relative paths in "
        f"{tmp_path / 'list.csv'} start from {tmp_path} (the image_root option); correct the "
        "paths or image_root, or pass skip_corrupt=True to leave the missing files out with a "
        "warning."
    )
    e = err.value
    assert isinstance(e, FileNotFoundError) and e.dataset == "csv/train" and e.total == 5
    assert e.missing == [str(tmp_path / "imgs" / f"{i}.png") for i in (2, 6, 8)]
    assert e.sources == [f"line {i + 2} of list.csv" for i in (2, 6, 8)]
    # a command line names its own option
    assert e.describe("set data.options.skip_corrupt=true").endswith(
        "correct the paths or image_root, or set data.options.skip_corrupt=true to leave the "
        "missing files out with a warning."
    )
    with pytest.warns(UserWarning, match="skipped 3 unreadable image"):
        kept = get_dataset("csv", tmp_path / "list.csv", "train", skip_corrupt=True)
    assert kept.paths == [str(tmp_path / "imgs" / f"{i}.png") for i in (0, 4)]


def test_a_run_reports_skipped_images_in_its_own_words(tmp_path: Path, write_image) -> None:
    """What a training run does with data.options.skip_corrupt: no Python warning, a log line in
    the run's words and the files listed in the run folder (split, path, reason)."""
    from rankedlist.data import SkippedImagesWarning
    from rankedlist.training.config import config_from_dict
    from rankedlist.training.recipe_data import get_split_dataset, record_skipped_images

    rows = ["path,label,split"]
    for i in range(8):
        rows.append(f"imgs/{i}.png,{i % 2 + 2 * (i >= 6)},{'train' if i < 6 else 'test'}")
        if i not in (1, 4):
            write_image(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    data = {"dataset": "csv", "root": str(tmp_path / "list.csv")}
    config = config_from_dict({"data": {**data, "options": {"skip_corrupt": True}}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run says it in its own words, not as a warning
        train = get_split_dataset(config, "train", None, quiet_skips=True)
        test = get_split_dataset(config, "test", None, quiet_skips=True)
    with pytest.warns(SkippedImagesWarning, match="skipped 3 unreadable image"):
        get_split_dataset(config, "train", None)  # a Python caller still gets the warning
    listing = tmp_path / "run" / "skipped_images.txt"
    listing.parent.mkdir()
    assert record_skipped_images(train, "train", listing) == (
        f"skipped 3 unreadable images of the train split (listed in {listing})"
    )
    img = tmp_path / "imgs"
    decode = [r for p, r in train.skipped if p.endswith("3.png")][0]
    assert decode.startswith("cannot decode: ") and "skip_corrupt" not in decode
    want = [
        f"train\t{img / '1.png'}\tfile not found",
        f"train\t{img / '3.png'}\t{decode}",
        f"train\t{img / '4.png'}\tfile not found",
    ]
    assert listing.read_text().splitlines() == want
    assert record_skipped_images(test, "test", listing) is None  # nothing skipped in test
    # a resumed run records its splits again: each image is listed once
    assert record_skipped_images(train, "train", listing) is not None
    assert listing.read_text().splitlines() == want
    (tmp_path / "imgs" / "6.png").unlink()
    test = get_split_dataset(config, "test", None, quiet_skips=True)
    assert record_skipped_images(test, "test", listing) == (
        f"skipped 1 unreadable image of the test split (listed in {listing})"
    )
    assert listing.read_text().splitlines() == [*want, f"test\t{img / '6.png'}\tfile not found"]
    # a split that skips nothing any more loses its lines; an emptied file goes
    assert record_skipped_images(object(), "train", listing) is None
    assert listing.read_text().splitlines() == [f"test\t{img / '6.png'}\tfile not found"]
    assert record_skipped_images(object(), "test", listing) is None
    assert not listing.exists()


def test_missing_images_message_names_first_five(tmp_path: Path, write_image) -> None:
    # 40 files in one folder (listed once with scandir), 8 of them deleted, 7 in the train split
    rows = ["path,label,split"]
    for i in range(40):
        write_image(tmp_path / "imgs" / f"{i:02d}.png")
        rows.append(f"imgs/{i:02d}.png,{i % 4},{'train' if i % 4 < 2 else 'test'}")
    gone = [1, 3, 5, 8, 9, 13, 20, 33]
    for i in gone:
        (tmp_path / "imgs" / f"{i:02d}.png").unlink()
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(MissingImagesError) as err:
        get_dataset("csv", tmp_path / "list.csv", "train")
    train_gone = [i for i in gone if i % 4 < 2]  # all but 3
    shown = ", ".join(
        f"{tmp_path / 'imgs' / f'{i:02d}.png'} (line {i + 2} of list.csv)" for i in train_gone[:5]
    )
    assert str(err.value).startswith(
        f"csv/train: 7 of 20 image files do not exist: {shown} and 2 more. Relative paths"
    )
    assert err.value.missing == [str(tmp_path / "imgs" / f"{i:02d}.png") for i in train_gone]


def test_missing_files_scan_matches_isfile(tmp_path: Path) -> None:
    # enough paths for the thread pool; folders of many files (scandir) and of one file (stat)
    paths = []
    for d in range(60):
        folder = tmp_path / f"d{d}"
        folder.mkdir()
        for i in range(70 if d % 2 else 1):
            if (d * 7 + i) % 13:
                (folder / f"{i}.jpg").touch()
            paths.append(str(folder / f"{i}.jpg"))
    paths += [str(tmp_path / "no_such_dir" / "x.jpg"), str(tmp_path / "d1")]  # a folder is no file
    expected = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    assert len(paths) > 2000 and len(expected) > 100
    assert missing_files(paths, num_workers=4) == expected
    assert missing_files(paths, num_workers=1) == expected


def test_folder_broken_link_reported_at_construction(tmp_path: Path, write_image) -> None:
    for c in "ab":
        write_image(tmp_path / c / "1.png")
    os.symlink(tmp_path / "elsewhere.png", tmp_path / "a" / "0.png")
    with pytest.raises(MissingImagesError) as err:
        get_dataset("folder", tmp_path, "train")
    assert str(err.value) == (
        f"folder/train: 1 of 2 image files do not exist: {tmp_path / 'a' / '0.png'}. They are "
        "broken links or were deleted while the folder was read; fix or delete them, or pass "
        "skip_corrupt=True to leave the missing files out with a warning."
    )


@pytest.mark.parametrize(
    "present,missing",
    [(["train"], ["test"]), (["train", "val"], ["test"]), (["val"], ["train", "test"])],
)
def test_folder_split_layout_missing_a_folder(
    tmp_path: Path, write_image, present: list[str], missing: list[str]
) -> None:
    for split in present:
        for c in "ab":
            write_image(tmp_path / split / c / "0.png")
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("folder", tmp_path, "train")
    has = " and ".join(f"{d}/" for d in present)
    expected = [str(tmp_path / d) for d in missing]
    assert str(err.value) == (
        f"folder: {tmp_path} has {has} but no {' or '.join(expected)}; with split folders both "
        "ROOT/train/<class>/<image> and ROOT/test/<class>/<image> are needed "
        f"(ROOT/val/<class>/<image> is optional). Add {' and '.join(expected)}, or put the class "
        f"folders directly in {tmp_path} for an automatic class-disjoint split."
    )


def test_folder_class_named_train_is_a_class(tmp_path: Path, write_image) -> None:
    # a flat layout may hold a class called "train" (vehicles) beside other classes
    for c in ("bus", "car", "train", "tram"):
        write_image(tmp_path / c / "0.png")
    assert get_dataset("folder", tmp_path, "test").classes == ["train", "tram"]


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


def test_corrupt_image_error_attributes_and_hint(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CorruptImageError) as err:
        read_rgb(tmp_path / "bad.png")
    e = err.value
    path = str(tmp_path / "bad.png")
    assert e.path == path and e.reason == f"cannot identify image file {path!r}"
    assert str(e) == (
        f"cannot decode image {path}: {e.reason}. Replace or delete the file, or pass "
        "skip_corrupt=True to skip unreadable images with a warning."
    )
    assert e.describe("pass --skip-corrupt") == (
        f"cannot decode image {path}: {e.reason}. Replace or delete the file, or pass "
        "--skip-corrupt to skip unreadable images with a warning."
    )
    again = pickle.loads(pickle.dumps(e))
    assert (str(again), again.path, again.reason) == (str(e), e.path, e.reason)
    # built from its message alone, as torch's DataLoader re-raises a worker's error
    bare = CorruptImageError("cannot decode image x.png")
    assert (str(bare), bare.path, bare.reason) == ("cannot decode image x.png", None, None)
    assert bare.describe("pass --skip-corrupt") == "cannot decode image x.png"
    assert isinstance(bare, OSError)


def test_corrupt_image_error_survives_dataloader_reraise(tmp_path: Path) -> None:
    # torch's DataLoader re-raises a worker's error through ExceptionWrapper, as type(message);
    # a real worker process costs a 5 s shutdown after an error, the wrapper is the same code.
    from torch._utils import ExceptionWrapper

    (tmp_path / "bad.png").write_bytes(b"not an image")
    try:
        read_rgb(tmp_path / "bad.png")
    except CorruptImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CorruptImageError) as err:
        wrapped.reraise()
    assert str(err.value).startswith("Caught CorruptImageError in DataLoader worker process 0.")
    assert f"cannot decode image {tmp_path / 'bad.png'}" in str(err.value)
    assert err.value.path is None


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
    # The tune and compare tests register recording glyph datasets in the same process.
    shipped = [n for n in list_datasets() if n not in ("glyphs_recorded", "glyphs_splits")]
    assert shipped == ["cars196", "csv", "cub200", "folder", "glyphs", "inshop", "sop"]
    assert evaluation_splits("inshop") == ("query", "gallery")
    assert evaluation_splits("cub200") == ("test",)
    with pytest.raises(ValueError, match="available"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="root"):
        get_dataset("cub200")
