"""The README's ready example for your own images: a folder of class folders, the shipped
``folder_resnet50`` recipe, then an index of the same folder searched with a query."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rankedlist.cli.main import main as cli


@pytest.fixture
def photos(tmp_path):
    """6 classes x 4 images, each class its own colour (so the test classes are separable)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c in range(6):
        (root / f"class{c}").mkdir(parents=True)
        base = rng.integers(0, 256, size=3)
        for i in range(4):
            pixels = np.clip(base + rng.integers(-20, 20, size=(48, 48, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg")
    return root


@pytest.mark.slow
def test_the_readme_example_trains_indexes_and_searches_a_folder(photos, tmp_path, capsys):
    run, index = tmp_path / "runs" / "folder", tmp_path / "photos.index"
    fast = [  # the recipe as shipped, made small: no download, tiny images, two iterations
        "model.pretrained=false", "data.image_size=64", "data.p=3", "data.k=2",
        "data.val_fraction=0", "train.eval_every=0", "train.iterations=2", "train.amp=none",
        "train.device=cpu", "train.report=false", "train.tensorboard=false",
    ]  # fmt: skip
    code = cli(["train", "--config", "folder_resnet50", f"data.root={photos}", *fast,
                f"train.run_dir={run}"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    # The flat layout: the first half of the sorted classes train, the other 3 are tested.
    assert metrics["config"]["data"]["dataset"] == "folder"
    assert 0.0 <= metrics["test"]["recall@1"] <= 1.0 and metrics["test"]["num_queries"] == 12

    code = cli(["index", "build", "--checkpoint", str(run), "--images", str(photos), "--out",
                str(index), "--labels-from-folders", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    query = photos / "class4" / "2.jpg"
    out = tmp_path / "hits.json"
    code = cli(["index", "search", "--index", str(index), str(query), "--k", "3", "--json",
                str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (found,) = json.loads(out.read_text())
    top = found["results"]
    assert top[0]["path"].endswith("class4/2.jpg") and top[0]["similarity"] == pytest.approx(1.0)
    assert top[0]["label"] == "class4" and len(top) == 3
