"""`rankedlist index build|add|search --backend milvus` through the command's parser and runner
(and in child processes where a process must die or several must share a collection): the
same results as the faiss index folder of the same images; an add killed with SIGKILL halfway
shows none of its rows and its re-run adds each image once; a real Milvus server process shared
by two searching processes; one `error:` line for an unreachable server, another model, another
dimension, and every misused option."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymilvus
import pytest
from _milvus_server import milvus_server_process
from _retrieval_helpers import MODEL_SECTION, make_image_folder, write_checkpoint

from rankedlist.cli.index import add_parser as add_index_parser
from rankedlist.cli.index import run as run_index_command
from rankedlist.models import create_model
from rankedlist.retrieval.milvus_index import MilvusIndex
from rankedlist.training import config_from_dict, save_checkpoint

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


def write_8d_checkpoint(path: Path) -> Path:
    """The helpers' tiny model with 8-d embeddings instead of 16: a model of another dimension."""
    section = dict(MODEL_SECTION, embedding_dim=8)
    config = config_from_dict({"model": section, "data": {"image_size": 32}}).to_dict()
    model = create_model(section["name"], embedding_dim=8, **section["options"])
    best = {"metric": "recall@1", "value": None, "iteration": None}
    state = {"model": model.state_dict(), "losses": {}, "config": config, "iteration": 1,
             "best": best, "world_size": 1}  # fmt: skip
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, another one (other weights), an 8-d one, 15 images (base) and 6 more, a
    faiss index folder of base and a Milvus Lite collection of it."""
    root = tmp_path_factory.mktemp("milvus_cli")
    ckpt, _, _ = write_checkpoint(root / "run" / "best.pt")
    other, _, _ = write_checkpoint(root / "other" / "best.pt", seed=1)
    write_8d_checkpoint(root / "narrow" / "best.pt")
    make_image_folder(root / "base", classes=3, per_class=5, seed=0)
    make_image_folder(root / "more", classes=2, per_class=3, seed=5)
    common = ["--checkpoint", str(ckpt), "--images", str(root / "base"), "--labels-from-folders"]
    assert run(["index", "build", *common, "--out", str(root / "folder"), *RUNTIME]) == 0
    milvus = ["--backend", "milvus", "--uri", str(root / "lite.db")]
    assert run(["index", "build", *common, *milvus, *RUNTIME]) == 0
    return root, ckpt, other, milvus


def search_json(argv: list[str], out: Path, k: int = 5) -> list[dict]:
    assert run(["index", "search", *argv, "--json", str(out), "--k", str(k), *RUNTIME]) == 0
    return json.loads(out.read_text())


def same_results(a: list[dict], b: list[dict]) -> None:
    assert [q["query"] for q in a] == [q["query"] for q in b]
    for qa, qb in zip(a, b, strict=True):
        assert [h["item"] for h in qa["results"]] == [h["item"] for h in qb["results"]]
        assert [h["label"] for h in qa["results"]] == [h["label"] for h in qb["results"]]
        for ha, hb in zip(qa["results"], qb["results"], strict=True):
            assert ha["similarity"] == pytest.approx(hb["similarity"], abs=1e-5)


def test_milvus_search_answers_as_the_index_folder(setup, tmp_path, capsys):
    root, _, _, milvus = setup
    queries = str(root / "more")
    folder = search_json(["--index", str(root / "folder"), queries], tmp_path / "f.json")
    ours = search_json([*milvus, queries], tmp_path / "m.json")
    same_results(ours, folder)
    assert len(ours) == 6 and all(len(q["results"]) == 5 for q in ours)


def test_add_then_search_equals_the_folder_index_after_the_same_add(setup, tmp_path, capsys):
    root, _, _, _ = setup
    import shutil

    shutil.copytree(root / "folder", tmp_path / "folder")
    shutil.copytree(root / "lite.db", tmp_path / "lite.db")
    milvus = ["--backend", "milvus", "--uri", str(tmp_path / "lite.db")]
    more = ["--images", str(root / "more"), *RUNTIME]
    assert run(["index", "add", "--index", str(tmp_path / "folder"), *more]) == 0
    capsys.readouterr()
    assert run(["index", "add", *milvus, *more]) == 0
    assert "15 -> 21 items (exact (Milvus FLAT))" in capsys.readouterr().out
    queries = str(root / "base")
    folder = search_json(["--index", str(tmp_path / "folder"), queries], tmp_path / "f.json")
    same_results(search_json([*milvus, queries], tmp_path / "m.json"), folder)
    capsys.readouterr()
    assert run(["index", "add", *milvus, *more]) == 0  # again: nothing twice
    captured = capsys.readouterr()
    assert "added 0 images" in captured.out and "21 -> 21 items" in captured.out
    assert "warning: 6 of the 6 images are in collection rankedlist" in captured.err


def test_ivf_and_hnsw_collections_from_the_command_line(setup, tmp_path, capsys):
    root, ckpt, _, _ = setup
    uri = str(tmp_path / "methods.db")
    common = ["--checkpoint", str(ckpt), "--images", str(root / "base"), "--labels-from-folders",
              *RUNTIME]  # fmt: skip
    milvus = ["--backend", "milvus", "--uri", uri]
    capsys.readouterr()
    assert run(["index", "build", *common, *milvus, "--collection", "by_ivf", "--method", "ivf",
                "--nlist", "2", "--nprobe", "1"]) == 0  # fmt: skip
    assert "ivf (Milvus IVF_FLAT): 2 lists, nprobe 1" in capsys.readouterr().out
    assert run(["index", "build", *common, *milvus, "--collection", "by_hnsw", "--method", "hnsw",
                "--ef", "20"]) == 0  # fmt: skip
    assert "hnsw (Milvus HNSW): M 32, efConstruction 100, ef 20" in capsys.readouterr().out
    # nprobe 2 of 2 lists and a large ef search everything: the exact answers.
    exact = search_json(["--index", str(root / "folder"), str(root / "more")], tmp_path / "e.json")
    for name, setting in (("by_ivf", ["--nprobe", "2"]), ("by_hnsw", ["--ef", "64"])):
        got = search_json([*milvus, "--collection", name, *setting, str(root / "more")],
                          tmp_path / f"{name}.json")  # fmt: skip
        same_results(got, exact)
    line = error_line(capsys, ["index", "search", *milvus, "--collection", "by_hnsw", "--nprobe",
                               "2", str(root / "more"), *RUNTIME])  # fmt: skip
    assert "--nprobe applies to an ivf index, but collection by_hnsw at" in line


def test_another_model_or_dimension_is_one_error_line(setup, capsys):
    root, _, other, milvus = setup
    query = str(root / "more" / "class_0" / "img_0.png")
    line = error_line(capsys, ["index", "search", *milvus, "--checkpoint", str(other), query,
                               *RUNTIME])  # fmt: skip
    assert f"{other} is not the model that built collection rankedlist at" in line
    assert "--allow-other-model" in line
    capsys.readouterr()
    assert run(["index", "search", *milvus, "--checkpoint", str(other), "--allow-other-model",
                query, *RUNTIME]) == 0  # fmt: skip
    assert "similarities are only meaningful with the same model" in capsys.readouterr().err
    narrow = str(root / "narrow" / "best.pt")
    argv = ["index", "add", *milvus, "--checkpoint", narrow, "--allow-other-model", "--images",
            str(root / "more"), *RUNTIME]  # fmt: skip
    capsys.readouterr()
    assert run(argv) == 2
    warning, line = capsys.readouterr().err.splitlines()  # the forced model's, then the error
    assert warning.startswith("warning: ") and line.startswith("error: ")
    assert "embeddings have dimension 8 but collection rankedlist at" in line
    assert "16-dimensional" in line
    assert len(MilvusIndex.open(milvus[3])) == 15  # nothing was added


def test_misused_options_are_one_error_line_each(setup, tmp_path, capsys):
    root, ckpt, _, milvus = setup
    build = ["index", "build", "--checkpoint", str(ckpt), "--images", str(root / "base"), *RUNTIME]
    cases = [
        (build + ["--backend", "milvus"], "--backend milvus needs --uri"),
        (build + ["--uri", str(tmp_path / "x.db")], "--uri names a Milvus collection"),
        (build + ["--out", str(tmp_path / "o"), *milvus], "--out names an index folder"),
        (build, "--out is required"),
        (build + ["--backend", "milvus", "--uri", str(tmp_path / "x.txt")], "ending in .db"),
        (build + ["--backend", "milvus", "--uri", "ftp://host"], "neither a Milvus server"),
        (build + [*milvus, "--collection", "no-dash"], "not a valid Milvus collection name"),
        (build + [*milvus, "--nlist", "4"], "--nlist is a setting of the ivf method"),
        (
            [
                "index",
                "search",
                "--backend",
                "milvus",
                "--uri",
                str(tmp_path / "none.db"),
                str(root / "more"),
            ],
            "no Milvus Lite database at",
        ),  # fmt: skip
        (
            ["index", "search", *milvus, "--collection", "absent", str(root / "more")],
            "has no collection absent (its collections: rankedlist)",
        ),  # fmt: skip
    ]
    for argv, expected in cases:
        assert expected in error_line(capsys, argv), argv
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "none.db").exists()


def test_unreachable_server_is_one_error_line_before_any_embedding(setup, capsys, monkeypatch):
    root, ckpt, _, _ = setup
    from rankedlist.retrieval import images_to_index

    monkeypatch.setattr(images_to_index, "build_index", None)  # reached: the test fails
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    line = error_line(capsys, ["index", "build", "--checkpoint", str(ckpt), "--images",
                               str(root / "base"), "--backend", "milvus", "--uri",
                               f"http://127.0.0.1:{port}", *RUNTIME])  # fmt: skip
    assert f"cannot reach the Milvus server at http://127.0.0.1:{port}" in line
    assert time.monotonic() - start < 10


KILLED_ADD = """
import sys, time
import pymilvus
from rankedlist.retrieval import milvus_rows

milvus_rows._CHUNK_BYTES = 1  # one row per upsert: the add is many calls long
upsert, calls = pymilvus.MilvusClient.upsert, []


def upsert_then_stall(self, *args, **kwargs):
    result = upsert(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 3:  # three of the six rows written: the parent kills us now
        print("HALFWAY", flush=True)
        time.sleep(300)
    return result


pymilvus.MilvusClient.upsert = upsert_then_stall
from rankedlist.cli.main import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_add_killed_halfway_shows_nothing_and_its_rerun_adds_once(setup, tmp_path, child_env,
                                                                  capsys):  # fmt: skip
    import shutil

    root, _, _, _ = setup
    shutil.copytree(root / "lite.db", tmp_path / "lite.db")
    (tmp_path / "killed_add.py").write_text(KILLED_ADD)
    milvus = ["--backend", "milvus", "--uri", str(tmp_path / "lite.db")]
    argv = [sys.executable, str(tmp_path / "killed_add.py"), "index", "add", *milvus,
            "--images", str(root / "more"), *RUNTIME]  # fmt: skip
    proc = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "HALFWAY"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    index = MilvusIndex.open(str(tmp_path / "lite.db"))
    count = pymilvus.MilvusClient(str(tmp_path / "lite.db")).query(
        "rankedlist", filter="", output_fields=["count(*)"]
    )
    assert len(index) == 15 and count[0]["count(*)"] == 18  # 3 rows written, none visible
    query = str(root / "more" / "class_0" / "img_0.png")
    hits = search_json([*milvus, query], tmp_path / "before.json", k=20)[0]["results"]
    assert len(hits) == 15 and all("img_" in h["item"] and "/" in h["item"] for h in hits)
    assert not any(h["path"].startswith(str(root / "more")) for h in hits)
    index.close()
    capsys.readouterr()
    assert run(["index", "add", *milvus, "--images", str(root / "more"), *RUNTIME]) == 0
    assert "15 -> 21 items" in capsys.readouterr().out
    index = MilvusIndex.open(str(tmp_path / "lite.db"))
    count = pymilvus.MilvusClient(str(tmp_path / "lite.db")).query(
        "rankedlist", filter="", output_fields=["count(*)"]
    )
    assert len(index) == 21 and count[0]["count(*)"] == 21  # each image once
    top = search_json([*milvus, query], tmp_path / "after.json")[0]["results"][0]
    assert top["path"] == str((root / "more" / "class_0" / "img_0.png").resolve())
    assert top["similarity"] == pytest.approx(1.0, abs=1e-5)
    index.close()


@pytest.fixture
def milvus_server(tmp_path, child_env):
    """A real Milvus server process (milvus-lite's gRPC server) on a free local port."""
    with milvus_server_process(tmp_path / "server", child_env()) as (uri, _):
        yield uri


@pytest.mark.slow
def test_two_processes_search_one_collection_on_a_server(setup, milvus_server, tmp_path,
                                                         child_env):  # fmt: skip
    root, ckpt, _, _ = setup
    milvus = ["--backend", "milvus", "--uri", milvus_server, "--collection", "shared"]
    assert run(["index", "build", "--checkpoint", str(ckpt), "--images", str(root / "base"),
                "--labels-from-folders", *milvus, *RUNTIME]) == 0  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankedlist",
                "index",
                "search",
                *milvus,
                "--k",
                "5",
                "--json",
                str(tmp_path / f"s{i}.json"),
                str(root / "more"),
                *RUNTIME,
            ],  # fmt: skip
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    folder = search_json(["--index", str(root / "folder"), str(root / "more")],
                         tmp_path / "f.json")  # fmt: skip
    for i in range(2):
        same_results(json.loads((tmp_path / f"s{i}.json").read_text()), folder)


def test_missing_milvus_extra_is_one_error_line_naming_it(setup, capsys, monkeypatch):
    root, _, _, milvus = setup
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if the extra were not installed
    line = error_line(capsys, ["index", "search", *milvus, str(root / "more"), *RUNTIME])
    assert "needs pymilvus and milvus-lite" in line
    assert "pip install 'rankedlist[milvus]'" in line
