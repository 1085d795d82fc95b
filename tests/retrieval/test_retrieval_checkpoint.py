"""From a trainer checkpoint to an index, searches, the picture and the `index` commands."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch
from _retrieval_helpers import make_image_folder, write_checkpoint
from PIL import Image

from rankedlist.cli.index import add_parser as add_index_parser
from rankedlist.cli.index import run as run_index_command
from rankedlist.data import build_transform
from rankedlist.retrieval import (
    EmbeddingIndex,
    build_index_from_checkpoint,
    list_images,
    save_search_picture,
    search_images,
)
from rankedlist.training.checkpoint_model import load_model_from_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    ckpt, model, config = write_checkpoint(root / "run" / "best.pt")
    images = make_image_folder(root / "images", classes=3, per_class=4)
    return root, ckpt, model, images


def reference_embeddings(model, paths, image_size=32):
    """By hand: PIL decode, the glyph test transform at the run's data.image_size, model.embed."""
    transform = build_transform("glyphs", train=False, image_size=image_size)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.eval().embed(x).numpy()


def test_load_model_rebuilds_the_trained_model(setup):
    root, ckpt, model, images = setup
    loaded = load_model_from_checkpoint(root / "run", device="cpu")  # a run folder: best.pt
    assert loaded.checkpoint == ckpt and loaded.iteration == 3 and loaded.image_size == 32
    assert not loaded.model.training
    for (name, a), (_, b) in zip(
        loaded.model.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.pt not found"):
        load_model_from_checkpoint(root / "nope.pt")


def test_build_index_from_checkpoint_embeds_every_image(setup):
    root, ckpt, model, images = setup
    index = build_index_from_checkpoint(
        ckpt, images, batch_size=5, device="cpu", progress=False, labels_from_folders=True
    )
    paths = list_images(images)
    assert index.items == [p.relative_to(images).as_posix() for p in paths]
    assert index.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert index.meta["classes"] == ["class_0", "class_1", "class_2"]
    assert index.meta["checkpoint"] == str(ckpt.resolve()) and index.meta["iteration"] == 3
    assert index.meta["model_spec"]["name"] == "glyphnet" and index.dim == 16
    np.testing.assert_allclose(index.embeddings, reference_embeddings(model, paths), atol=1e-5)
    assert index.item_path(0) == paths[0].resolve()


def test_search_images_finds_each_query_itself_first(setup):
    root, ckpt, model, images = setup
    index = build_index_from_checkpoint(ckpt, images, device="cpu", progress=False)
    paths = list_images(images)
    queries = [paths[1], paths[6]]
    results = search_images(index, ckpt, queries, k=4, device="cpu")
    ref = reference_embeddings(model, queries) @ index.embeddings.T
    for q, hits in zip(queries, results, strict=True):
        assert hits[0].path == q.resolve() and hits[0].similarity == pytest.approx(1, abs=1e-5)
    for row, hits in zip(ref, results, strict=True):
        order = np.argsort(-row, kind="stable")[:4]
        assert [h.index for h in hits] == order.tolist()
        np.testing.assert_allclose([h.similarity for h in hits], row[order], atol=1e-5)
    # A model object instead of a checkpoint gives the same answers.
    same = search_images(index, model, queries, k=4, device="cpu")
    assert [[h.index for h in r] for r in same] == [[h.index for h in r] for r in results]


def test_search_picture_is_a_png_with_the_frames(setup, tmp_path):
    root, ckpt, model, images = setup
    index = build_index_from_checkpoint(
        ckpt, images, device="cpu", progress=False, labels_from_folders=True
    )
    queries = list_images(images)[:2]
    results = search_images(index, ckpt, queries, k=3, device="cpu")
    out = save_search_picture(
        queries, results, tmp_path / "pics" / "search.png", k=3, query_labels=[0, 0],
        class_names=index.meta["classes"],
    )  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
        assert im.width > 300 and im.height > 200
    # The green frame of the (correct) first hit is drawn.
    assert (np.abs(pixels - [0x2C, 0xA0, 0x2C]).sum(1) < 30).sum() > 100
    with pytest.raises(ValueError, match="2 query paths but 1"):
        save_search_picture(queries, results[:1], tmp_path / "x.png")


def index_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankedlist")
    add_index_parser(parser.add_subparsers(dest="command"))
    return parser


def test_index_commands_build_then_search(setup, tmp_path, capsys):
    root, ckpt, model, images = setup
    parser = index_parser()
    out = tmp_path / "idx"
    args = parser.parse_args(
        ["index", "build", "--checkpoint", str(root / "run"), "--images", str(images),
         "--out", str(out), "--device", "cpu", "--no-progress", "--labels-from-folders",
         "--batch-size", "5"]
    )  # fmt: skip
    assert run_index_command(args) == 0
    printed = capsys.readouterr().out
    assert "indexed 12 images (16-d)" in printed and "recall@1" in printed
    index = EmbeddingIndex.load(out)
    expected = build_index_from_checkpoint(
        ckpt, images, device="cpu", progress=False, labels_from_folders=True
    )
    np.testing.assert_allclose(index.embeddings, expected.embeddings, atol=1e-6)
    assert index.items == expected.items

    paths = list_images(images)
    args = parser.parse_args(
        ["index", "search", "--index", str(out), str(paths[0]), str(paths[5]), "--k", "3",
         "--picture", str(tmp_path / "p.png"), "--json", str(tmp_path / "r.json"),
         "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert run_index_command(args) == 0  # the checkpoint comes from the index's meta
    printed = capsys.readouterr().out
    assert str(paths[0]) in printed and "class_0/img_0.png" in printed
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["results"][0]["item"] for r in results] == ["class_0/img_0.png", "class_1/img_1.png"]
    assert all(len(r["results"]) == 3 for r in results)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_index_commands_report_bad_input(setup, tmp_path, capsys):
    root, ckpt, model, images = setup
    parser = index_parser()
    with pytest.raises(SystemExit):  # argparse: the action is required
        parser.parse_args(["index"])
    capsys.readouterr()

    def error_of(argv):
        """run_index_command's exit code 2 and its one stderr line."""
        assert run_index_command(parser.parse_args(argv)) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("error: ")
        return line

    line = error_of(["index", "search", "--index", str(tmp_path / "none"), "q.png"])
    assert re.search("index folder .*none not found", line)
    EmbeddingIndex(np.eye(16), [f"{i}" for i in range(16)]).save(tmp_path / "bare")
    line = error_of(["index", "search", "--index", str(tmp_path / "bare"), "q.png"])
    assert "pass --checkpoint" in line
    line = error_of(
        ["index", "search", "--index", str(tmp_path / "bare"), "--checkpoint", str(ckpt),
         str(tmp_path / "missing.png"), "--device", "cpu"]
    )  # fmt: skip
    assert re.search("query image .*missing.png not found", line)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.txt").write_text("mine")
    line = error_of(
        ["index", "build", "--checkpoint", str(ckpt), "--images", str(images), "--out",
         str(tmp_path / "photos"), "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    assert "not an embedding index" in line  # refuses to replace a folder that is not an index
    assert (tmp_path / "photos" / "keep.txt").read_text() == "mine"
    # --debug: the error itself, for its traceback.
    args = parser.parse_args(["index", "search", "--index", str(tmp_path / "none"), "q.png"])
    args.debug = True
    with pytest.raises(FileNotFoundError, match="index folder .*none not found"):
        run_index_command(args)
