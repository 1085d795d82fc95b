"""CUB-200-2011, Cars196, SOP and In-Shop read from miniature copies in their official layouts.

Each miniature is written here, in tmp_path, with the real file names and formats; the expected
splits, labels and paths are derived from what the test wrote, not from the reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rankedlist.data import CorruptImageError, DatasetCountError, MissingImagesError, get_dataset
from rankedlist.data.cars196 import CARS_URL
from rankedlist.data.cub200 import CUB_LAYOUT, CUB_URL
from rankedlist.data.inshop import INSHOP_URL
from rankedlist.data.sop import SOP_URL

# ---------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = {1: 3, 2: 2, 3: 2, 4: 2, 5: 3, 101: 2, 102: 3, 150: 2}  # class id -> images


@pytest.fixture
def cub_root(tmp_path: Path, write_image, class_colour) -> Path:
    base = tmp_path / "CUB_200_2011"
    images, labels, names = [], [], []
    img_id = 0
    for c, n in CUB_CLASSES.items():
        names.append(f"{c} {c:03d}.Bird_{c}")
        for j in range(n):
            img_id += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            # the first image of class 2 is greyscale, as some CUB images are
            write_image(
                base / "images" / rel, class_colour(c), mode="L" if (c, j) == (2, 0) else "RGB"
            )
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {c}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("\n".join(names) + "\n")
    # the classification split file exists in the real dataset and must be ignored
    (base / "train_test_split.txt").write_text("\n".join(f"{i} 1" for i in range(1, img_id + 1)))
    return tmp_path


CUB_COUNTS = {"train": (12, 5), "test": (7, 3)}


def test_cub_splits_labels_and_paths(cub_root: Path, class_colour, mean_colour) -> None:
    train = get_dataset("cub200", cub_root, "train", expected_counts=CUB_COUNTS)
    test = get_dataset("cub200", cub_root / "CUB_200_2011", "test", expected_counts=CUB_COUNTS)
    assert len(train) == 12 and len(test) == 7
    assert train.classes == [f"{c:03d}.Bird_{c}" for c in (1, 2, 3, 4, 5)]
    assert test.classes == ["101.Bird_101", "102.Bird_102", "150.Bird_150"]
    assert train.labels.dtype == np.int64 and train.labels.ndim == 1
    np.testing.assert_array_equal(np.bincount(test.labels), [2, 3, 2])
    for ds in (train, test):
        for i in range(len(ds)):
            c = int(ds.classes[ds.labels[i]].split(".")[0])
            path = Path(ds.paths[i])
            assert path.parent.name == f"{c:03d}.Bird_{c}" and path.is_file()
            img, label = ds[i]
            assert label == ds.labels[i] and img.mode == "RGB"
            if Path(ds.paths[i]).name != "Bird_2_0.jpg":
                np.testing.assert_allclose(mean_colour(img), class_colour(c), atol=4)


def test_cub_greyscale_comes_back_rgb(cub_root: Path, class_colour) -> None:
    train = get_dataset("cub200", cub_root, "train", expected_counts=CUB_COUNTS)
    i = next(i for i, p in enumerate(train.paths) if p.endswith("Bird_2_0.jpg"))
    img = train.load_image(i)
    assert img.mode == "RGB" and img.size == (9, 7)
    arr = np.asarray(img).astype(int)
    assert (arr[..., 0] == arr[..., 1]).all() and abs(arr.mean() - class_colour(2)[0]) <= 3


def test_cub_wrong_counts_name_file_expected_found_and_url(cub_root: Path) -> None:
    with pytest.raises(DatasetCountError) as err:
        get_dataset("cub200", cub_root, "train")  # the published counts
    msg = str(err.value)
    assert "images.txt" in msg and "5,864" in msg and "12 images" in msg and CUB_URL in msg
    with pytest.raises(DatasetCountError, match="expected 13 images"):
        get_dataset("cub200", cub_root, "test", expected_counts={"train": (13, 5)})
    assert len(get_dataset("cub200", cub_root, "train", check_counts=False)) == 12


def test_cub_missing_files(cub_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does_not_exist.*CUB_200_2011"):
        get_dataset("cub200", tmp_path / "does_not_exist")
    (cub_root / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("cub200", cub_root, expected_counts=CUB_COUNTS)
    assert "image_class_labels.txt" in str(err.value) and CUB_URL in str(err.value)


def test_cub_missing_image_file_named_at_load(cub_root: Path) -> None:
    train = get_dataset("cub200", cub_root, "train", expected_counts=CUB_COUNTS)
    Path(train.paths[3]).unlink()
    with pytest.raises(FileNotFoundError, match=Path(train.paths[3]).name):
        train[3]


def test_cub_missing_images_reported_at_construction(cub_root: Path) -> None:
    base = cub_root / "CUB_200_2011"
    gone = ["001.Bird_1/Bird_1_2.jpg", "005.Bird_5/Bird_5_0.jpg"]
    for rel in gone:
        (base / "images" / rel).unlink()
    with pytest.raises(MissingImagesError) as err:
        get_dataset("cub200", cub_root, "train", expected_counts=CUB_COUNTS)
    assert str(err.value) == (
        f"cub200/train: 2 of 12 image files do not exist: {base / 'images' / gone[0]}, "
        f"{base / 'images' / gone[1]}. The copy is incomplete or not in the expected layout "
        f"({CUB_LAYOUT}); obtain the dataset from {CUB_URL}, or pass skip_corrupt=True to leave "
        "the missing files out with a warning."
    )
    assert err.value.sources == [None, None]
    test = get_dataset("cub200", cub_root, "test", expected_counts=CUB_COUNTS)  # all there
    assert len(test) == 7


def test_sop_missing_category_folder(sop_root: Path) -> None:
    import shutil

    shutil.rmtree(sop_root / "chair_final")
    with pytest.raises(MissingImagesError) as err:
        get_dataset("sop", sop_root, "test", expected_counts=SOP_COUNTS)
    assert err.value.missing == [str(sop_root / "chair_final" / f"1004_{j}.JPG") for j in (0, 1)]
    assert str(err.value).startswith("sop/test: 2 of 5 image files do not exist: ")
    assert SOP_URL in str(err.value)


def test_cub_val_fraction_is_class_disjoint(cub_root: Path) -> None:
    kw = {"expected_counts": CUB_COUNTS, "val_fraction": 0.4}
    full = get_dataset("cub200", cub_root, "train", expected_counts=CUB_COUNTS)
    train = get_dataset("cub200", cub_root, "train", **kw)
    val = get_dataset("cub200", cub_root, "val", **kw)
    assert set(train.classes).isdisjoint(val.classes)
    assert sorted(train.classes + val.classes) == full.classes
    assert len(val.classes) == 2  # floor(0.4 * 5)
    assert sorted(train.paths + val.paths) == sorted(full.paths)
    np.testing.assert_array_equal(np.unique(val.labels), [0, 1])  # contiguous again
    with pytest.raises(ValueError, match="val_fraction"):
        get_dataset("cub200", cub_root, "val", expected_counts=CUB_COUNTS)


def test_corrupt_image_error_and_skip(cub_root: Path) -> None:
    train = get_dataset("cub200", cub_root, "train", expected_counts=CUB_COUNTS)
    # class 4 has two images: corrupt both, so skipping empties a class
    bad = [p for p in train.paths if "/004.Bird_4/" in p]
    for p in bad:
        Path(p).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    i = train.paths.index(bad[0])
    with pytest.raises(CorruptImageError, match="Bird_4_0.jpg"):
        train[i]
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        skipped = get_dataset(
            "cub200", cub_root, "train", expected_counts=CUB_COUNTS, skip_corrupt=True
        )
    assert len(skipped) == 10 and sorted(p for p, _ in skipped.skipped) == sorted(bad)
    assert "004.Bird_4" not in skipped.classes and len(skipped.classes) == 4
    np.testing.assert_array_equal(np.unique(skipped.labels), np.arange(4))
    for j in range(len(skipped)):  # labels still name the right class folder
        assert Path(skipped.paths[j]).parent.name == skipped.classes[skipped.labels[j]]


# ---------------------------------------------------------------- Cars196

CARS_CLASSES = {1: 2, 2: 3, 3: 2, 99: 2, 150: 2, 196: 1}


@pytest.fixture
def cars_root(tmp_path: Path, write_image, class_colour) -> Path:
    from scipy.io import savemat

    rows = []
    n = 0
    for c, k in CARS_CLASSES.items():
        for _ in range(k):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_image(tmp_path / rel, class_colour(c))
            # the 'test' flag is the classification split: alternate it to prove it is ignored
            rows.append((rel, 1, 2, 30, 40, c, n % 2))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for j, row in enumerate(rows):
        for f, v in zip(fields, row, strict=True):
            ann[0, j][f] = np.array([[v]]) if not isinstance(v, str) else np.array([v])
    names = np.empty((1, 196), dtype=object)
    for i in range(196):
        names[0, i] = f"Make Model {i + 1}"
    savemat(tmp_path / "cars_annos.mat", {"annotations": ann, "class_names": names})
    return tmp_path


CARS_COUNTS = {"train": (7, 3), "test": (5, 3)}


def test_cars_split_by_class_not_by_test_flag(cars_root: Path, class_colour, mean_colour) -> None:
    train = get_dataset("cars196", cars_root, "train", expected_counts=CARS_COUNTS)
    test = get_dataset("cars196", cars_root, "test", expected_counts=CARS_COUNTS)
    assert train.classes == ["Make Model 1", "Make Model 2", "Make Model 3"]
    assert test.classes == ["Make Model 99", "Make Model 150", "Make Model 196"]
    np.testing.assert_array_equal(np.bincount(train.labels), [2, 3, 2])
    np.testing.assert_array_equal(np.bincount(test.labels), [2, 2, 1])
    for ds in (train, test):
        for i in range(len(ds)):
            c = int(ds.classes[ds.labels[i]].split()[-1])
            assert Path(ds.paths[i]).parent.name == "car_ims"
            np.testing.assert_allclose(mean_colour(ds.load_image(i)), class_colour(c), atol=4)


def test_cars_errors(cars_root: Path) -> None:
    with pytest.raises(DatasetCountError) as err:
        get_dataset("cars196", cars_root, "train")
    assert "cars_annos.mat" in str(err.value) and "8,054" in str(err.value)
    assert CARS_URL in str(err.value)
    (cars_root / "cars_annos.mat").unlink()
    with pytest.raises(FileNotFoundError, match="cars_annos.mat"):
        get_dataset("cars196", cars_root, expected_counts=CARS_COUNTS)


# ---------------------------------------------------------------- Stanford Online Products


@pytest.fixture
def sop_root(tmp_path: Path, write_image, class_colour) -> Path:
    spec = {"train": {1: (1, 3), 2: (1, 2), 3: (2, 2)}, "test": {4: (2, 2), 5: (3, 3)}}
    cats = {1: "bicycle_final", 2: "chair_final", 3: "lamp_final"}
    n = 0
    for split, classes in spec.items():
        lines = ["image_id class_id super_class_id path"]
        for c, (sup, k) in classes.items():
            for j in range(k):
                n += 1
                rel = f"{cats[sup]}/{1000 + c}_{j}.JPG"
                write_image(tmp_path / rel, class_colour(c))  # JPEG data, upper-case extension
                lines.append(f"{n} {c} {sup} {rel}")
        (tmp_path / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


SOP_COUNTS = {"train": (7, 3), "test": (5, 2)}


def test_sop_splits(sop_root: Path, class_colour, mean_colour) -> None:
    train = get_dataset("sop", sop_root, "train", expected_counts=SOP_COUNTS)
    test = get_dataset("sop", sop_root, "test", expected_counts=SOP_COUNTS)
    assert train.classes == ["1", "2", "3"] and test.classes == ["4", "5"]
    np.testing.assert_array_equal(train.super_labels, [0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(test.super_labels, [1, 1, 2, 2, 2])
    for ds in (train, test):
        for i in range(len(ds)):
            c = int(ds.classes[ds.labels[i]])
            assert Path(ds.paths[i]).name.startswith(f"{1000 + c}_")
            np.testing.assert_allclose(mean_colour(ds[i][0]), class_colour(c), atol=4)


def test_sop_errors(sop_root: Path) -> None:
    with pytest.raises(DatasetCountError) as err:
        get_dataset("sop", sop_root, "train")
    assert "Ebay_train.txt" in str(err.value) and "59,551" in str(err.value)
    assert SOP_URL in str(err.value)
    with pytest.raises(DatasetCountError, match="Ebay_test.txt"):
        get_dataset("sop", sop_root, "train", expected_counts={"train": (7, 3), "test": (6, 2)})
    (sop_root / "Ebay_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Ebay_test.txt"):
        get_dataset("sop", sop_root, expected_counts=SOP_COUNTS)


# ---------------------------------------------------------------- In-Shop


@pytest.fixture
def inshop_root(tmp_path: Path, write_image, class_colour) -> Path:
    rows = []
    # item -> (status, count); item 6 has gallery images only, item 4 its queries after item 5
    plan = [
        (1, "train", 2), (2, "train", 3), (3, "train", 2),
        (5, "query", 2), (4, "query", 1), (4, "gallery", 2), (5, "gallery", 1), (6, "gallery", 2),
    ]  # fmt: skip
    for item, status, k in plan:
        for j in range(k):
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{status}_{j:02d}_front.jpg"
            write_image(tmp_path / "Img" / rel, class_colour(item))
            rows.append(f"{rel} id_{item:08d} {status}")
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text(text)
    return tmp_path


INSHOP_COUNTS = {"train": (7, 3), "query": (3, 2), "gallery": (5, 3), "test": (8, 3)}


def test_inshop_query_gallery_share_labels(inshop_root: Path, class_colour, mean_colour) -> None:
    kw = {"expected_counts": INSHOP_COUNTS}
    train = get_dataset("inshop", inshop_root, "train", **kw)
    query = get_dataset("inshop", inshop_root, "query", **kw)
    gallery = get_dataset("inshop", inshop_root, "gallery", **kw)
    assert train.classes == [f"id_{i:08d}" for i in (1, 2, 3)]
    assert query.classes == gallery.classes == [f"id_{i:08d}" for i in (4, 5, 6)]
    assert len(query) == 3 and len(gallery) == 5
    for ds in (train, query, gallery):
        for i in range(len(ds)):
            item = ds.classes[ds.labels[i]]
            assert f"/{item}/" in ds.paths[i]
            np.testing.assert_allclose(
                mean_colour(ds.load_image(i)), class_colour(int(item[3:])), atol=4
            )
    assert all("query_" in p for p in query.paths) and all("gallery_" in p for p in gallery.paths)


def test_inshop_errors(inshop_root: Path) -> None:
    with pytest.raises(ValueError, match="query.*gallery"):
        get_dataset("inshop", inshop_root, "test", expected_counts=INSHOP_COUNTS)
    with pytest.raises(DatasetCountError) as err:
        get_dataset("inshop", inshop_root, "train")
    assert "list_eval_partition.txt" in str(err.value) and "25,882" in str(err.value)
    assert INSHOP_URL in str(err.value)
    with pytest.raises(DatasetCountError, match="'query' split"):
        get_dataset("inshop", inshop_root, "train", expected_counts={"query": (4, None)})
    (inshop_root / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        get_dataset("inshop", inshop_root, "train", expected_counts=INSHOP_COUNTS)
