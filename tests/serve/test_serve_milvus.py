"""`rankedlist serve --backend milvus` and `serve --model x.pt2`, as real processes: a Milvus
Lite collection answers as `MilvusIndex.search_items` in this process and as the faiss folder
of the same images, its thumbnails by item id only; two servers on one Milvus server answer
alike and both see an `index add` through that server without a failed request; a `.pt2`
export embeds as `torch.export.load`'s program and searches as its checkpoint. Misused options,
an unreachable server and another model are one `error:` line each."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _milvus_server import milvus_server_process
from _serve_helpers import REPO, glyph_checkpoint, running_server

from rankedlist.serve.index_source import IndexSource, IndexUnavailable, public_uri

RUNTIME = ["--device", "cpu", "--no-progress"]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    from rankedlist.cli.main import main

    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def _one_error(argv: list[str], capsys) -> str:
    code, err = _run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queries(images: Path) -> list[Path]:
    files = sorted(images.rglob("*.png"))
    return [files[3], files[len(files) // 2], files[-2]]


def _reference_embeddings(checkpoint: Path, files: list[Path]) -> np.ndarray:
    from rankedlist.retrieval import embed_images, open_index_model

    model = open_index_model(checkpoint=checkpoint, device="cpu")
    return embed_images(model.model, files, model.transform, progress=False)


def _neighbours(body: dict) -> list[list[dict]]:
    return [result["neighbors"] for result in body["results"]]


# --------------------------------------------------------------------------- no server needed


def test_misused_options_are_one_error_line_each(tmp_path, capsys):
    lite = str(tmp_path / "none.db")
    cases = [
        ([], "--index is required: the index folder (or pass --backend milvus --uri URI"),
        (["--index", str(tmp_path), "--backend", "milvus", "--uri", lite],
         "--index names an index folder, but --backend milvus"),
        (["--uri", lite], "--uri names a Milvus collection: pass --backend milvus"),
        (["--index", str(tmp_path), "--collection", "c"], "--collection names a Milvus"),
        (["--backend", "milvus"], "--backend milvus needs --uri"),
        (["--backend", "milvus", "--uri", "ftp://host"], "neither a Milvus server"),
        (["--backend", "milvus", "--uri", str(tmp_path / "x.txt")], "ending in .db"),
        (["--backend", "milvus", "--uri", lite, "--collection", "1-bad"],
         "not a valid Milvus collection name"),
        (["--backend", "milvus", "--uri", lite, "--workers", "2"],
         "Milvus Lite serves one process at a time"),
        (["--backend", "milvus", "--uri", lite], f"no Milvus Lite database at {lite}"),
    ]  # fmt: skip
    for args, words in cases:
        err = _one_error(["serve", *args, "--port", str(_free_port())], capsys)
        assert words in err, (args, err)
    assert not (tmp_path / "none.db").exists()  # nothing created by a refused start


def test_an_unreachable_milvus_server_is_one_error_line_at_start(capsys):
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    err = _one_error(["serve", "--backend", "milvus", "--uri", uri, "--port",
                      str(_free_port())], capsys)  # fmt: skip
    assert f"cannot reach the Milvus server at {uri}" in err
    assert time.monotonic() - start < 30


def test_credentials_are_left_out_of_the_uri_shown():
    assert public_uri("http://user:secret@milvus.internal:19530") == "http://milvus.internal:19530"
    assert public_uri("https://db.example:443/path?token=abc") == "https://db.example:443/path"
    assert public_uri("data/photos.db") == "data/photos.db"


def test_a_shared_index_refused_after_a_change_is_unavailable_until_it_fits_again():
    """A shared collection keeps no old version: while its newest one is refused (another
    model), searches fail with the reason; once it fits again it is served."""
    state = {"version": 1, "model": "a"}
    index = type("Index", (), {"meta": {}})()

    def accept(_):
        if state["model"] != "a":
            raise ValueError("built with model b")

    source = IndexSource(lambda: index, lambda: state["version"], accept, "c", shared=True)
    assert source.current() is index
    state.update(version=2, model="b")
    for _ in range(2):  # refused, and still refused on the next request
        with pytest.raises(IndexUnavailable, match="built with model b"):
            source.current()
    state.update(version=3, model="a")
    assert source.current() is index and source.reloads == 1 and source.last_error is None
    # A folder index (not shared) keeps serving the version it has.
    folder = IndexSource(lambda: index, lambda: state["version"], accept, "f")
    state.update(version=4, model="b")
    assert folder.current() is index and "could not be reloaded" in folder.last_error


# --------------------------------------------------------------------------- Milvus Lite


@pytest.fixture(scope="module")
def lite(glyph_index, tmp_path_factory, child_env):
    """(server, root, ref.db): the glyph images in a Milvus Lite collection built by `index
    build --backend milvus` in another process, served by `serve --backend milvus`; ref.db is
    a copy of the database for this process (Milvus Lite serves one process per file)."""
    images, checkpoint, _ = glyph_index
    root = tmp_path_factory.mktemp("serve-milvus-lite")
    build = [sys.executable, "-m", "rankedlist", "index", "build", "--backend", "milvus",
             "--uri", str(root / "lite.db"), "--checkpoint", str(checkpoint), "--images",
             str(images), "--labels-from-folders", *RUNTIME]  # fmt: skip
    done = subprocess.run(build, env=child_env(), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shutil.copytree(root / "lite.db", root / "ref.db")
    args = ["--backend", "milvus", "--uri", str(root / "lite.db"), "--device", "cpu"]
    with running_server(args, child_env(), root / "server.log") as server:
        yield server, root, root / "ref.db"


@pytest.mark.slow
def test_lite_collection_answers_as_milvus_in_process_and_the_faiss_folder(glyph_index, lite):
    from rankedlist.retrieval import EmbeddingIndex
    from rankedlist.retrieval.milvus_index import MilvusIndex

    images, checkpoint, folder = glyph_index
    server, root, ref = lite
    info = server.get_json("/info")["index"]
    assert info["backend"] == "milvus" and info["uri"] == str(root / "lite.db")
    assert info["collection"] == "rankedlist" and info["name"] == "rankedlist"
    files = _queries(images)
    emb = _reference_embeddings(checkpoint, files)
    milvus = MilvusIndex.open(str(ref))
    try:
        expected = milvus.search_items(emb, 6)
        assert info["size"] == len(milvus) and info["method"] == "exact"
    finally:
        milvus.close()
    faiss_sims, faiss_rows = EmbeddingIndex.load(folder).search(emb, 6)
    folder_items = EmbeddingIndex.load(folder).items
    status, body = server.post("/search", [(f.name, f.read_bytes()) for f in files], [("k", "6")])
    assert status == 200, body
    for got, want, sims, rows in zip(_neighbours(body), expected, faiss_sims, faiss_rows,
                                     strict=True):  # fmt: skip
        assert [n["item_id"] for n in got] == [m.index for m in want]
        assert [n["path"] for n in got] == [str(m.path) for m in want]
        assert [n["item"] for n in got] == [folder_items[r] for r in rows]  # the faiss folder's
        np.testing.assert_allclose([n["similarity"] for n in got], sims, atol=1e-5)
        assert got[0]["class"] == Path(got[0]["item"]).parent.name


@pytest.mark.slow
def test_lite_thumbnails_by_item_id_only(lite):
    from PIL import Image

    from rankedlist.data import read_rgb

    server, root, _ = lite
    size = server.get_json("/health")["index_size"]
    for row in (0, size // 2, size - 1):  # rows never in an answer of this server, too
        status, data, headers = server.request("GET", f"/items/{row}/thumbnail")
        assert status == 200 and headers["content-type"] == "image/png"
        path = _path_of_row(root / "ref.db", row)
        expected = read_rgb(path)
        expected.thumbnail((160, 160))
        got = Image.open(io.BytesIO(data)).convert("RGB")
        assert np.array_equal(np.asarray(got), np.asarray(expected))
    attempts = [
        f"/items/{size}/thumbnail", "/items/-1/thumbnail", "/items/1e1/thumbnail",
        "/items/%2e%2e/thumbnail", "/items/..%2f..%2fetc%2fpasswd/thumbnail",
        "/items/%2fetc%2fpasswd/thumbnail", "/items/../../etc/passwd",
        "/items/0/../../../etc/passwd", "/items/0x1/thumbnail", "/items/0%20or%201/thumbnail",
    ]  # fmt: skip
    for path in attempts:
        status, data, _ = server.request("GET", path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in data, path


def _path_of_row(db: Path, row: int) -> Path:
    """The file of ``row``, read with pymilvus directly from the copy of the database."""
    import pymilvus

    client = pymilvus.MilvusClient(uri=str(db))
    try:
        (hit,) = client.query("rankedlist", filter=f"id == {row}", output_fields=["item"])
        props = client.describe_collection("rankedlist")["properties"]
    finally:
        client.close()
    meta = json.loads(next(v for k, v in props.items() if k.endswith("meta")))
    return Path(meta["images_root"]) / hit["item"]


@pytest.mark.slow
def test_another_model_is_refused_before_serving(lite, tmp_path, capsys):
    _, _, ref = lite
    other = glyph_checkpoint(tmp_path / "other", seed=1)
    err = _one_error(["serve", "--backend", "milvus", "--uri", str(ref), "--checkpoint",
                      str(other), "--port", str(_free_port())], capsys)  # fmt: skip
    assert "is not the model that built collection rankedlist at" in err
    assert "--allow-other-model" in err


# --------------------------------------------------------------------------- a Milvus server


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory, child_env):
    """A real Milvus server process (milvus-lite's gRPC server) on a free local port."""
    data = tmp_path_factory.mktemp("milvus-server")
    with milvus_server_process(data, child_env()) as server:
        yield server


@pytest.fixture(scope="module")
def two_servers(glyph_index, milvus_server, tmp_path_factory, child_env):
    """(server A, server B, root, milvus argv): one collection on the Milvus server, served by
    two `serve` processes."""
    from contextlib import ExitStack

    from rankedlist.cli.main import main

    images, checkpoint, _ = glyph_index
    root = tmp_path_factory.mktemp("serve-milvus-server")
    milvus = ["--backend", "milvus", "--uri", milvus_server[0], "--collection", "shared"]
    assert main(["index", "build", *milvus, "--checkpoint", str(checkpoint), "--images",
                 str(images), "--labels-from-folders", *RUNTIME]) == 0  # fmt: skip
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                running_server([*milvus, "--device", "cpu"], child_env(), root / f"s{i}.log")
            )
            for i in range(2)
        ]
        yield servers[0], servers[1], root, milvus


@pytest.mark.slow
def test_two_servers_on_one_collection_answer_alike_and_both_see_an_add(glyph_index, two_servers):
    from PIL import Image

    from rankedlist.cli.main import main
    from rankedlist.retrieval import EmbeddingIndex

    images, checkpoint, folder = glyph_index
    a, b, root, milvus = two_servers
    files = _queries(images)
    uploads = [(f.name, f.read_bytes()) for f in files]
    answers = [s.post("/search", uploads, [("k", "5")]) for s in (a, b)]
    assert answers[0][0] == answers[1][0] == 200
    assert answers[0][1] == answers[1][1]
    sims, rows = EmbeddingIndex.load(folder).search(_reference_embeddings(checkpoint, files), 5)
    items = EmbeddingIndex.load(folder).items
    for got, want_sims, want_rows in zip(_neighbours(answers[0][1]), sims, rows, strict=True):
        assert [n["item"] for n in got] == [items[r] for r in want_rows]
        np.testing.assert_allclose([n["similarity"] for n in got], want_sims, atol=1e-5)
    info = a.get_json("/info")["index"]
    assert (info["backend"], info["uri"], info["collection"]) == ("milvus", milvus[3], "shared")

    before = a.get_json("/health")["index_size"]
    new = root / "more"
    (new / "C").mkdir(parents=True)
    for i, image in enumerate(sorted((images / "C").glob("*.png"))[:4]):
        with Image.open(image) as im:  # mirrored: new images, not copies of indexed ones
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new / "C" / f"new{i}.png")
    query = (new / "C" / "new0.png").read_bytes()
    statuses: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:  # both servers asked all along the add
        while not stop.is_set():
            for server in (a, b):
                statuses.append(server.post("/search", [("q.png", query)], [("k", "3")])[0])

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        assert main(["index", "add", *milvus, "--images", str(new), *RUNTIME]) == 0
        time.sleep(0.5)  # a few more requests after the add
    finally:
        stop.set()
        asker.join()
    assert len(statuses) >= 2 and set(statuses) == {200}, statuses
    for server in (a, b):
        assert server.get_json("/health")["index_size"] == before + 4
        status, body = server.post("/search", [("new0.png", query)], [("k", "1")])
        (top,) = _neighbours(body)[0]
        assert top["item"].endswith("new0.png") and top["item_id"] == before
        assert top["similarity"] == pytest.approx(1.0, abs=1e-5) and top["class"] == "C"
        status, data, _ = server.request("GET", f"/items/{before}/thumbnail")
        assert status == 200  # a row added by another process: its thumbnail by id


@pytest.mark.slow
def test_a_lost_milvus_server_is_a_503_naming_it_and_the_servers_stay_up(
    glyph_index, milvus_server, two_servers
):
    """Last of the server tests: it stops the Milvus server."""
    images = glyph_index[0]
    uri, milvus = milvus_server
    a, b, _, _ = two_servers
    milvus.terminate()
    milvus.wait(timeout=30)
    query = sorted(images.rglob("*.png"))[0]
    for server in (a, b):
        start = time.monotonic()
        status, body = server.post("/search", [(query.name, query.read_bytes())])
        assert status == 503 and uri in body["detail"] and "\n" not in body["detail"], body
        assert time.monotonic() - start < 60
        assert server.request("GET", "/health")[0] == 503
        assert server.process.poll() is None  # still running, for when the server is back


# --------------------------------------------------------------------------- serve --model x.pt2


@pytest.fixture(scope="module")
def pt2_served(glyph_index, tmp_path_factory, child_env):
    """(server, model.pt2): the glyph checkpoint exported by `rankedlist export --format
    exported-program`, serving the glyph index folder."""
    from rankedlist.cli.main import main

    _, checkpoint, folder = glyph_index
    root = tmp_path_factory.mktemp("serve-pt2")
    model = root / "model.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(model), "--format",
                 "exported-program"]) == 0  # fmt: skip
    args = ["--index", str(folder), "--model", str(model), "--device", "cpu"]
    with running_server(args, child_env(), root / "server.log") as server:
        yield server, model


@pytest.mark.slow
def test_a_pt2_export_embeds_as_torch_export_and_searches_as_its_checkpoint(
    glyph_index, pt2_served
):
    import torch

    from rankedlist.data import build_transform, read_rgb
    from rankedlist.export.exporters import CONTRACT_EXTRA_FILE
    from rankedlist.retrieval import EmbeddingIndex

    images, checkpoint, folder = glyph_index
    server, model = pt2_served
    info = server.get_json("/info")
    assert info["model"]["runtime"] == "torch.export" and info["model"]["file"] == "model.pt2"
    files = _queries(images)
    # The reference: the program torch.export.load gives, on the contract's prepared input.
    extra = {CONTRACT_EXTRA_FILE: ""}
    program = torch.export.load(str(model), extra_files=extra)
    contract = json.loads(extra[CONTRACT_EXTRA_FILE])
    transform = build_transform(contract["transform_style"], False, int(contract["image_size"]))
    batch = torch.stack([transform(read_rgb(f)) for f in files])
    with torch.no_grad():
        expected = program.module()(batch).numpy()
    status, body = server.post("/embed", [(f.name, f.read_bytes()) for f in files])
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["embeddings"]), expected, atol=1e-5)
    # /search as the checkpoint's embeddings search the index.
    sims, rows = EmbeddingIndex.load(folder).search(_reference_embeddings(checkpoint, files), 5)
    status, body = server.post("/search", [(f.name, f.read_bytes()) for f in files], [("k", "5")])
    for got, want_sims, want_rows in zip(_neighbours(body), sims, rows, strict=True):
        assert [n["item_id"] for n in got] == want_rows.tolist()
        np.testing.assert_allclose([n["similarity"] for n in got], want_sims, atol=1e-5)
