"""`rankedlist index build --method`, `index add` and `index search --nprobe/--ef`, through the
command's own parser and runner: the index methods from the command line, `add` against a
build of everything, and one `error:` line for each bad input."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
from _retrieval_helpers import make_image_folder, write_checkpoint

from rankedlist.cli.index import add_parser as add_index_parser
from rankedlist.cli.index import run as run_index_command
from rankedlist.retrieval import EmbeddingIndex
from rankedlist.retrieval import images_to_index as images_to_index_module

# One image per forward pass: an image's embedding then does not depend on its batch.
RUNTIME = ["--device", "cpu", "--no-progress", "--batch-size", "1"]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rankedlist")
    add_index_parser(parser.add_subparsers(dest="command"))
    return run_index_command(parser.parse_args(argv))


def error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint; folder A (classes 0-2), folder B (classes 3-5) and ALL = A + B."""
    root = tmp_path_factory.mktemp("index_cli_methods")
    ckpt, _, _ = write_checkpoint(root / "run" / "best.pt")
    make_image_folder(root / "all", classes=6, per_class=5, seed=1)
    for name, classes in (("a", range(3)), ("b", range(3, 6))):
        for c in classes:
            shutil.copytree(root / "all" / f"class_{c}", root / name / f"class_{c}")
    return root, ckpt


def build(root, ckpt, images, out, *extra) -> EmbeddingIndex:
    argv = ["index", "build", "--checkpoint", str(ckpt), "--images", str(root / images),
            "--out", str(root / out), "--labels-from-folders", *RUNTIME, *extra]  # fmt: skip
    assert run(argv) == 0
    return EmbeddingIndex.load(root / out)


def test_add_then_search_equals_build_all_then_search(setup, capsys):
    root, ckpt = setup
    whole = build(root, ckpt, "all", "idx_all")
    grown = build(root, ckpt, "a", "idx_grown")
    assert run(["index", "add", "--index", str(root / "idx_grown"), "--images", str(root / "b"),
                *RUNTIME]) == 0  # fmt: skip
    assert "added 15 images" in capsys.readouterr().out
    grown = EmbeddingIndex.load(root / "idx_grown")
    assert len(grown) == len(whole) == 30
    assert grown.meta["classes"] == whole.meta["classes"]  # new classes appended in order
    np.testing.assert_array_equal(grown.labels, whole.labels)
    assert grown.items[15:] == [str((root / "b" / i).resolve()) for i in whole.items[15:]]
    np.testing.assert_array_equal(grown.embeddings, whole.embeddings)
    for a, b in zip(grown.search(None, 5, True), whole.search(None, 5, True), strict=True):
        np.testing.assert_array_equal(a, b)
    queries = [str(root / "b" / "class_4" / "img_0.png"), str(root / "a" / "class_1")]
    for idx in ("idx_grown", "idx_all"):
        argv = ["index", "search", "--index", str(root / idx), *queries, "--k", "4",
                "--json", str(root / f"{idx}.json"), *RUNTIME]  # fmt: skip
        assert run(argv) == 0
    found = [json.loads((root / f"{i}.json").read_text()) for i in ("idx_grown", "idx_all")]
    for g, w in zip(*found, strict=True):
        # the same images (one copy under b/, the other under all/), in the same order
        assert [r["path"].split("/")[-2:] for r in g["results"]] == [
            r["path"].split("/")[-2:] for r in w["results"]
        ]
        assert [r["similarity"] for r in g["results"]] == [r["similarity"] for r in w["results"]]


@pytest.mark.parametrize("method, options", [("ivf", ["--nlist", "2", "--nprobe", "1"]),
                                             ("hnsw", ["--ef", "12"])])  # fmt: skip
def test_approximate_methods_from_the_command_line(setup, capsys, method, options):
    root, ckpt = setup
    capsys.readouterr()
    index = build(root, ckpt, "a", f"idx_{method}", "--method", method, *options)
    printed = capsys.readouterr().out
    assert f"({method}: " in printed and f"through the {method} index" in printed
    meta = json.loads((root / f"idx_{method}" / "meta.json").read_text())["search_method"]
    assert meta == index.method_params and meta["method"] == method
    if method == "ivf":
        assert (meta["nlist"], meta["nprobe"], meta["training_sample"]) == (2, 1, 15)
    else:
        assert meta["ef"] == 12
    setting = ["--nprobe", "2"] if method == "ivf" else ["--ef", "40"]
    query = str(root / "a" / "class_2" / "img_3.png")
    argv = ["index", "search", "--index", str(root / f"idx_{method}"), query, "--k", "3",
            *setting, *RUNTIME]  # fmt: skip
    assert run(argv) == 0
    hits = capsys.readouterr().out.splitlines()[1:]
    assert len(hits) == 3 and "class_2/img_3.png" in hits[0]  # the query itself comes first
    add = ["index", "add", "--index", str(root / f"idx_{method}"), "--images",
           str(root / "b"), *RUNTIME]  # fmt: skip
    assert run(add) == 0
    grown = EmbeddingIndex.load(root / f"idx_{method}")
    assert len(grown) == 30 and grown._method.index.ntotal == 30
    assert grown.method_params == index.method_params  # not rebuilt: the same structure
    _, rows = grown.search(grown.embeddings[15:], 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(15, 30))  # the new rows are found


def test_ivf_add_far_beyond_its_training_warns(setup, tmp_path, capsys):
    root, ckpt = setup
    make_image_folder(tmp_path / "few", classes=1, per_class=4, seed=5)
    build(tmp_path, ckpt, "few", "idx", "--method", "ivf", "--nlist", "1")
    capsys.readouterr()
    assert run(["index", "add", "--index", str(tmp_path / "idx"), "--images", str(root / "all"),
                *RUNTIME]) == 0  # fmt: skip
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: ") and "8.5 times the items its ivf lists were trained on"


def test_bad_method_options_are_one_line_before_any_embedding(setup, tmp_path, capsys, monkeypatch):
    root, ckpt = setup

    def no_embedding(*args, **kwargs):
        raise AssertionError("the images were embedded before the options were checked")

    monkeypatch.setattr(images_to_index_module, "embed_images", no_embedding)
    base = ["index", "build", "--checkpoint", str(ckpt), "--images", str(root / "a"),
            "--out", str(tmp_path / "idx"), *RUNTIME]  # fmt: skip
    line = error_line(capsys, [*base, "--method", "annoy"])
    assert "unknown index method 'annoy': choose exact, ivf, hnsw or auto" in line
    line = error_line(capsys, [*base, "--method", "exact", "--nprobe", "4"])
    assert "--nprobe is a setting of the ivf method but the index is built with --method exact" in (
        line
    )
    line = error_line(capsys, [*base, "--nlist", "4"])
    assert "built with the default method auto; pass --method ivf with it" in line
    line = error_line(capsys, [*base, "--method", "hnsw", "--nprobe", "4"])
    assert "pass --method ivf with it, or leave --nprobe out" in line
    line = error_line(capsys, [*base, "--method", "ivf", "--nprobe", "0"])
    assert "--nprobe must be at least 1, got 0" in line
    assert not (tmp_path / "idx").exists()


def test_a_search_setting_that_does_not_fit_the_index_is_one_line(setup, capsys):
    root, ckpt = setup
    exact = build(root, ckpt, "a", "idx_exact", "--method", "exact")
    assert exact.method == "exact"
    query = str(root / "a" / "class_0" / "img_0.png")
    for idx, option, message in [
        ("idx_exact", ["--nprobe", "8"], "--nprobe applies to an ivf index, but {} is an exact "
         "index; leave --nprobe out, or rebuild the index with `rankedlist index build --method "
         "ivf`"),
        ("idx_exact", ["--ef", "8"], "--ef applies to an hnsw index, but {} is an exact index"),
    ]:  # fmt: skip
        argv = ["index", "search", "--index", str(root / idx), query, *option, *RUNTIME]
        assert message.format(root / idx) in error_line(capsys, argv)
    ivf = build(root, ckpt, "a", "idx_ivf2", "--method", "ivf", "--nlist", "2")
    argv = ["index", "search", "--index", str(root / "idx_ivf2"), query, *RUNTIME]
    line = error_line(capsys, [*argv, "--ef", "8"])
    assert "is an ivf index (it takes --nprobe)" in line
    line = error_line(capsys, [*argv, "--nprobe", "3"])
    assert "nprobe 3 is more than the index's 2 lists" in line and str(root / "idx_ivf2") in line
    assert ivf.method == "ivf"
