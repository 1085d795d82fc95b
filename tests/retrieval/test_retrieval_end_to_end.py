"""A real (tiny) training run -> `index build` on its test images -> the run's own test numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankedlist.cli.main import main as cli
from rankedlist.retrieval import EmbeddingIndex

CHARACTERS = "ABCDEFGHJKLMNPQR"  # 16 glyph classes: 8 to train on, 8 to test on


@pytest.mark.slow
def test_index_of_a_trained_run_reproduces_its_test_metrics(tmp_path):
    from rankedlist.data import get_dataset
    from rankedlist.training import load_config
    from rankedlist.training import main as train

    config = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "glyphs.yaml",
        [
            "train.iterations=2", f"train.run_dir={tmp_path / 'run'}", "train.report=false",
            "train.tensorboard=false", "model.embedding_dim=16", "data.p=4", "data.k=2",
            f"data.options.characters={CHARACTERS}",
        ],
    )  # fmt: skip
    result = train(config)
    assert result.status == "completed"
    published = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]

    # The run's test images as files, one folder per class, as a user's photos would be.
    test_set = get_dataset("glyphs", split="test", characters=CHARACTERS)
    for i, label in enumerate(test_set.labels):
        folder = tmp_path / "images" / test_set.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        test_set.load_image(i).save(folder / f"{i:04d}.png")

    # Through the `rankedlist` command itself, so its wiring is what is tested.
    build = ["index", "build", "--checkpoint", str(tmp_path / "run"), "--images",
             str(tmp_path / "images"), "--out", str(tmp_path / "idx"), "--labels-from-folders",
             "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli(build) == 0
    index = EmbeddingIndex.load(tmp_path / "idx")
    assert len(index) == published["num_queries"] == len(test_set)
    metrics = index.evaluate()
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r"):
        assert metrics[key] == pytest.approx(published[key], abs=1e-6), key

    # Searching an indexed image finds itself first (similarity 1), and the JSON says so.
    query = sorted((tmp_path / "images").rglob("*.png"))[0]
    out = tmp_path / "hits.json"
    search = ["index", "search", "--index", str(tmp_path / "idx"), str(query), "--k", "3",
              "--json", str(out), "--picture", str(tmp_path / "hits.png"), "--device", "cpu",
              "--no-progress"]  # fmt: skip
    assert cli(search) == 0
    assert (tmp_path / "hits.png").stat().st_size > 0
    (hit,) = json.loads(out.read_text())
    top = hit["results"][0]
    assert Path(top["path"]).resolve() == query.resolve()
    assert top["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert len(hit["results"]) == 3
