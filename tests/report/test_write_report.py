"""``write_report`` end to end on synthetic runs: files, metrics.json, report.md, errors."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
from _report_helpers import (
    FakeImageDataset,
    clustered_embeddings,
    make_config,
    make_history,
    make_metrics,
)
from PIL import Image

import rankedlist.atomic_write as atomic_write_module
from rankedlist.report import write_report

PICTURES = ("training_curves", "recall_at_k", "embedding_map", "retrieval_grid")


def _check_png(path, min_side=150):
    with Image.open(path) as img:
        img.verify()  # a complete, valid PNG
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= min_side and max(img.size) <= 4000, img.size


def _run(tmp_path, protocol, ks, *, multi=False, dataset=True, query_count=None, base=0.6134):
    x, labels = clustered_embeddings(6, 5, dim=16, noise=0.8)
    if query_count is not None:  # queries and gallery must share classes
        perm = np.random.default_rng(0).permutation(len(x))
        x, labels = x[perm], labels[perm]
    metrics = {"fused": make_metrics(ks, base)}
    if multi:
        for head, b in (("low", 0.3), ("mid", 0.4), ("high", 0.55)):
            metrics[head] = make_metrics(ks, b)
    files = write_report(
        tmp_path,
        config=make_config(protocol, multi_level=multi),
        history=make_history(),
        test_metrics=metrics,
        protocol=protocol,
        embeddings=x,
        labels=labels,
        dataset=FakeImageDataset(labels) if dataset else None,
        query_count=query_count,
    )
    return files, metrics


def test_cub_multi_level_report(tmp_path):
    files, metrics = _run(tmp_path, "cub200", (1, 2, 4, 8), multi=True)
    assert set(files) == {"metrics", "report", "html", *PICTURES}
    for key, path in files.items():
        assert path.parent == tmp_path and path.stat().st_size > 0, key
    for key in PICTURES:
        _check_png(files[key])
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writes left no temporary file

    doc = json.loads(files["metrics"].read_text())
    assert doc["test"] == pytest.approx(metrics["fused"])
    assert set(doc["heads"]) == {"low", "mid", "high"}
    assert doc["heads"]["mid"] == pytest.approx(metrics["mid"])
    assert doc["protocol"] == "cub200"
    assert doc["config"] == make_config("cub200", multi_level=True)
    assert doc["units"]["test"] == "fraction" and doc["units"]["published"] == "percent"
    published = {row["method"]: row["metrics"] for row in doc["published"]}
    assert published["RLL-(L,M,H)"]["recall@1"] == 61.3
    assert published["RLL-H"]["nmi"] == 63.6
    assert doc["reference"] == []

    text = files["report"].read_text()
    assert text.startswith("# CUB-200-2011 · bninception · rll (multi-level L,M,H)")
    # Our row: fractions printed as percents with one decimal, beside the paper's rows.
    ours = next(line for line in text.splitlines() if line.startswith("| **This run"))
    assert "RLL-(L,M,H)" in ours
    cells = [c.strip().strip("*") for c in ours.strip("|").split("|")]
    assert cells[1:8] == ["61.3", "66.3", "71.3", "76.3", "41.3", "36.3", "71.3"]
    paper = next(line for line in text.splitlines() if line.startswith("| RLL-(L,M,H) |"))
    assert [c.strip() for c in paper.strip("|").split("|")][1:8] == [
        "61.3",
        "72.7",
        "82.7",
        "89.4",
        "–",
        "–",
        "66.1",
    ]
    assert "| RLL-H | 57.4 | 69.7 | 79.2 | 86.9 |" in text
    assert "Proxy-Anchor (BN-Inception, 512-d) | 69.1 |" in text
    # Each published row's source, in the table and in full below it and in metrics.json.
    assert paper.rstrip().endswith("| RLL paper, CVPR 2019 |")
    assert "- **RLL paper, CVPR 2019**: Wang et al., Ranked List Loss for Deep Metric" in text
    assert "- **Kim et al., CVPR 2020 (code)**: Kim et al., Proxy Anchor Loss" in text
    sources = {row["method"]: row["source"] for row in doc["published"]}
    assert "CVPR 2019" in sources["RLL-H"] and "Proxy Anchor" in sources["Proxy-Anchor"]
    for internal in ("shared/", "protocols.md", "rll-spec"):
        assert internal not in text and internal not in files["metrics"].read_text()
    # Per-head table, pictures by relative link, key config lines.
    assert "## Per head" in text
    assert "| mid | 40.0 | 45.0 | 50.0 | 55.0 |" in text
    for key in PICTURES:
        assert f"]({files[key].name})" in text
    assert "| `loss.params.margin` | 0.4 |" in text
    assert "| `optim.lr` | 0.01 |" in text
    assert "/nowhere" not in text.split("<details>")[0]  # paths only in the full config block


def test_glyphs_beside_raw_pixel_baseline(tmp_path):
    files, _ = _run(tmp_path, "glyphs", (1, 2, 4, 8), base=0.9312)
    text = files["report"].read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Raw pixels"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Columns: method, R@1, R@2, R@4, R@8, R-Prec., MAP@R, NMI, source.
    assert cells[1:8] == ["80.5", "90.0", "94.7", "97.0", "42.4", "34.5", "72.4"]
    assert "reference" in cells[0] and cells[8] == "measured: benchmarks/glyphs_raw_pixels.py"
    assert "| **This run: RLL-H, bninception** | **93.1** |" in text
    assert "- **measured: benchmarks/glyphs_raw_pixels.py**: raw pixels, measured by" in text
    assert "`rankedlist train --config glyphs train.iterations=150`" in text
    assert "## Per head" not in text
    doc = json.loads(files["metrics"].read_text())
    assert doc["published"] == []  # measurements, not publications
    raw = doc["reference"][0]
    assert (raw["metrics"]["recall@1"], raw["metrics"]["map@r"], raw["metrics"]["nmi"]) == (
        80.5,
        34.5,
        72.4,
    )
    assert raw["source"].startswith("raw pixels, measured by benchmarks/glyphs_raw_pixels.py")
    for internal in ("shared/", "protocols.md", "rll-spec"):
        assert internal not in text and internal not in files["metrics"].read_text()


def test_without_dataset_skips_the_grid(tmp_path):
    files, _ = _run(tmp_path, "sop", (1, 10, 100, 1000), dataset=False)
    assert "retrieval_grid" not in files
    assert not (tmp_path / "retrieval_grid.png").exists()
    text = files["report"].read_text()
    assert "Not drawn: no test dataset was given" in text
    assert "| RLL-(L,M,H) | 79.8 | 91.3 | 96.3 | – |" in text  # SOP has no published R@1000
    for key in ("training_curves", "recall_at_k", "embedding_map"):
        _check_png(files[key])


def test_inshop_query_count(tmp_path):
    files, _ = _run(tmp_path, "inshop", (1, 10, 20, 30, 40, 50), query_count=12)
    assert set(files) == {"metrics", "report", "html", *PICTURES}
    text = files["report"].read_text()
    assert "12 queries searched against a gallery of 18 images" in text
    assert "| RLL-(L,M,H), released 2020 code (384-d fused) | 89.9 |" in text
    _check_png(files["retrieval_grid"])


def test_default_protocol_and_unknown_dataset(tmp_path):
    x, labels = clustered_embeddings(3, 3, dim=4)
    config = {"data": {"dataset": "folder"}, "model": {"name": "resnet50"}, "loss": {"name": "x"}}
    files = write_report(
        tmp_path,
        config=config,
        history=[],
        test_metrics={"fused": {"recall@1": 0.5}},
        protocol="default",
        embeddings=x,
        labels=labels,
    )
    text = files["report"].read_text()
    assert "training_curves" not in files and "Not drawn: no training records" in text
    assert "No published numbers exist for this dataset" in text
    assert json.loads(files["metrics"].read_text())["published"] == []


def test_non_finite_and_numpy_values_are_valid_json(tmp_path):
    x, labels = clustered_embeddings(3, 3, dim=4)
    metrics = {"fused": {"recall@1": np.float32(0.25), "nmi": float("nan"), "lone_queries": 2}}
    files = write_report(
        tmp_path,
        config=make_config("cub200"),
        history=[],
        test_metrics=metrics,
        protocol="cub200",
        embeddings=x,
        labels=labels,
    )
    doc = json.loads(files["metrics"].read_text())
    assert doc["test"] == {"recall@1": 0.25, "nmi": None, "lone_queries": 2}
    text = files["report"].read_text()
    assert "2 test queries have no same-class item" in text


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"protocol": "cifar"}, ValueError, "protocol must be one of"),
        ({"test_metrics": {"high": {}}}, ValueError, "fused"),
        ({"labels": np.zeros(3)}, ValueError, "one label per embedding"),
        ({"embeddings": np.zeros(9)}, ValueError, "N x D"),
        ({"query_count": 9}, ValueError, "query_count"),
        ({"config": "cfg.yaml"}, TypeError, "config must be"),
        ({"history": [1, 2]}, TypeError, "history"),
        ({"dataset": FakeImageDataset(np.zeros(4, dtype=int))}, ValueError, "dataset has 4"),
    ],
)
def test_bad_inputs(tmp_path, change, error, match):
    x, labels = clustered_embeddings(3, 3, dim=4)
    kwargs = dict(
        config=make_config("cub200"),
        history=[],
        test_metrics={"fused": {"recall@1": 0.5}},
        protocol="cub200",
        embeddings=x,
        labels=labels,
    )
    kwargs.update(change)
    with pytest.raises(error, match=match):
        write_report(tmp_path, **kwargs)


def test_missing_run_dir(tmp_path):
    x, labels = clustered_embeddings(3, 3, dim=4)
    with pytest.raises(FileNotFoundError, match="run_dir"):
        write_report(
            tmp_path / "absent",
            config={},
            history=[],
            test_metrics={"fused": {}},
            protocol="default",
            embeddings=x,
            labels=labels,
        )


def _fill_disk_while_writing(monkeypatch, name: str, room: int = 64) -> None:
    """Every write through ``rankedlist.atomic_write`` to the file ``name`` runs out of space
    after ``room`` bytes (the part that fitted stays in the temporary file, as on a real disk);
    the other files are written normally."""
    real_mkstemp = tempfile.mkstemp
    temporaries: dict[int, str] = {}
    left = {"room": room}

    def mkstemp(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        temporaries[fd] = os.path.basename(tmp)
        return fd, tmp

    real_write = atomic_write_module._TemporaryFile._write

    def write(self, data):
        if not temporaries.get(self.fileno(), "").startswith(f".{name}."):
            return real_write(self, data)
        data = memoryview(data).cast("B")
        if len(data) > left["room"]:
            real_write(self, data[: left["room"]])
            left["room"] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left["room"] -= len(data)
        return real_write(self, data)

    monkeypatch.setattr(atomic_write_module, "tempfile", SimpleNamespace(mkstemp=mkstemp))
    monkeypatch.setattr(atomic_write_module._TemporaryFile, "_write", write)


@pytest.mark.parametrize("name", ["metrics.json", "recall_at_k.png", "report.md", "report.html"])
def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, name):
    """A rerun that fills the disk while writing ``name`` fails with ENOSPC and leaves the previous
    ``name`` whole: every report file is written to a temporary file, then renamed."""
    files, _ = _run(tmp_path, "cub200", (1, 2, 4, 8))
    before = {path.name: path.read_bytes() for path in files.values()}

    _fill_disk_while_writing(monkeypatch, name)
    with pytest.raises(OSError) as info:
        _run(tmp_path, "cub200", (1, 2, 4, 8), base=0.75)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()

    assert (tmp_path / name).read_bytes() == before[name]
    assert not list(tmp_path.glob(".*.tmp"))  # the partial temporary file was removed
    # Whatever was (re)written before the failure is complete too.
    json.loads((tmp_path / "metrics.json").read_text())
    for key in PICTURES:
        _check_png(tmp_path / f"{key}.png")
    assert (tmp_path / "report.md").read_text().startswith("# CUB-200-2011")


def test_full_disk_on_a_first_run_leaves_no_file(tmp_path, monkeypatch):
    _fill_disk_while_writing(monkeypatch, "metrics.json")
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)):
        _run(tmp_path, "cub200", (1, 2, 4, 8))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
