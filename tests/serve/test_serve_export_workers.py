"""`rankedlist serve` of an ONNX export with two worker processes: answers as onnxruntime and
the index give them in this process, and an `index add` by another process is picked up by
both workers while requests keep being answered from a whole index."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from _serve_helpers import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(glyph_index, tmp_path_factory, child_env):
    """(server, root): a copy of the glyph index (this module adds to it), served through its
    checkpoint's ONNX export by two uvicorn workers."""
    from rankedlist.export.checked_export import export_checkpoint

    images, checkpoint, index = glyph_index
    root = tmp_path_factory.mktemp("serve-onnx")
    shutil.copytree(index, root / "idx")
    (root / "images").symlink_to(images)
    export_checkpoint(checkpoint, root / "model.onnx", check=False)
    args = ["--index", str(root / "idx"), "--model", str(root / "model.onnx"), "--workers", "2"]
    with running_server(args, child_env(), root / "server.log") as server:
        yield server, root


def test_an_export_is_served_through_onnxruntime(served):
    from rankedlist.retrieval import EmbeddingIndex, embed_images, open_index_model

    server, root = served
    info = server.get_json("/info")
    index = EmbeddingIndex.load(root / "idx")
    assert info["model"]["runtime"] == "onnxruntime" and info["model"]["file"] == "model.onnx"
    assert info["model"]["fingerprint"] == index.meta["model_fingerprint"]  # the checkpoint's
    queries = sorted((root / "images").rglob("*.png"))[5:8]
    onnx = open_index_model(model_file=root / "model.onnx")
    emb = embed_images(onnx.model, queries, onnx.transform, progress=False)
    sims, rows = index.search(emb, 4)
    status, body = server.post("/search", [(q.name, q.read_bytes()) for q in queries], [("k", "4")])
    assert status == 200, body
    for result, ref_sims, ref_rows in zip(body["results"], sims, rows, strict=True):
        assert [n["item_id"] for n in result["neighbors"]] == ref_rows.tolist()
        np.testing.assert_allclose([n["similarity"] for n in result["neighbors"]], ref_sims,
                                   atol=1e-5)  # fmt: skip
    status, body = server.post("/embed", [(queries[0].name, queries[0].read_bytes())])
    np.testing.assert_allclose(body["embeddings"][0], emb[0], atol=1e-5)


def test_index_add_is_picked_up_by_every_worker_without_a_failed_request(served):
    from PIL import Image

    from rankedlist.cli.main import main

    server, root = served
    before = server.get_json("/health")["index_size"]
    new = root / "more"
    (new / "C").mkdir(parents=True)
    for i, image in enumerate(sorted((root / "images" / "C").glob("*.png"))[:5]):
        with Image.open(image) as im:  # mirrored: new images, not copies of indexed ones
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new / "C" / f"new{i}.png")
    query = new / "C" / "new0.png"
    answers: list[tuple[int, int]] = []
    stop = threading.Event()

    def keep_asking() -> None:  # searches all along the add: each one whole, old or new
        while not stop.is_set():
            status, body = server.post("/search", [(query.name, query.read_bytes())],
                                       [("k", "100")])  # fmt: skip
            answers.append((status, len(body["results"][0]["neighbors"]) if status == 200 else 0))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        argv = ["index", "add", "--index", str(root / "idx"), "--images", str(new), "--no-progress"]
        assert main(argv) == 0
        seen, deadline = [], 60
        for _ in range(deadline * 5):
            seen.append(server.get_json("/health")["index_size"])
            if seen[-10:] == [before + 5] * 10:  # ten in a row: both workers have it
                break
            threading.Event().wait(0.2)
        assert seen[-10:] == [before + 5] * 10, seen[-20:]
    finally:
        stop.set()
        asker.join(timeout=120)
    assert answers and all(status == 200 for status, _ in answers)
    assert {n for _, n in answers} <= {before, before + 5}
    status, body = server.post("/search", [(query.name, query.read_bytes())], [("k", "1")])
    top = body["results"][0]["neighbors"][0]
    assert top["item_id"] >= before and top["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert top["class"] == "C"
    info = server.get_json("/info")
    assert info["index"]["size"] == before + 5 and info["index"]["reload_error"] is None
