"""The Milvus backend against independent references, on Milvus Lite: the exact collection
returns numpy's brute-force neighbours (float64, ties by row) and the faiss exact index's; the
approximate ones reach faiss's recall@10 at the same settings within 0.03 and all of it when
they scan everything; the collection really holds the Milvus index type and parameters asked
for; adds are all or nothing and never twice; a collection that is not ours, a writer at work
and an unreachable server are refused."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pymilvus
import pytest
from _retrieval_helpers import clustered

from rankedlist.folder_lock import FolderBusyError
from rankedlist.retrieval.embedding_index import EmbeddingIndex
from rankedlist.retrieval.milvus_collection import KEY
from rankedlist.retrieval.milvus_index import MilvusIndex

RECALL_TOLERANCE = 0.03  # |recall@10 Milvus - recall@10 faiss| at the same settings


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 inner products, ordered by similarity descending, then row ascending."""
    sims = q.astype(np.float64) @ x.astype(np.float64).T
    rows = np.stack([np.lexsort((np.arange(len(x)), -s))[:k] for s in sims])
    return np.take_along_axis(sims, rows, 1), rows


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """2,000 random unit vectors with ties made on purpose: 12 copies of row 3 scattered over
    the rows (a query equal to it has a 12-way tie across the 10th place) and pairs of equal
    rows; 200 queries, the first one row 3 itself."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copies = [3, 40, 41, 500, 777, 901, 1200, 1201, 1500, 1650, 1800, 1999]
    x[copies] = x[3]
    x[1000:1100] = x[1100:1200]  # 100 pairs of equal rows
    q = rng.standard_normal((200, 24)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[0], q[1] = x[3], x[1150]
    uri = str(tmp_path_factory.mktemp("milvus_tied") / "tied.db")
    items = [f"class_{i % 7}/img_{i}.png" for i in range(len(x))]
    index = MilvusIndex.create(uri, "tied", x, items, np.arange(len(x)) % 7, method="exact")
    yield index, x, q, copies
    index.close()


def test_exact_collection_is_brute_force_with_ties_by_row(tied):
    index, x, q, copies = tied
    sims, rows = index.search(q, 10)
    ref_sims, ref_rows = brute_force(x, q, 10)
    # The 12-way tie at the top of query 0: the 10 lowest rows, in row order (not Milvus's).
    assert rows[0].tolist() == copies[:10]
    # Query 1 is one row of a pair: both rows, lower first.
    assert rows[1, :2].tolist() == [1050, 1150]
    np.testing.assert_allclose(sims, ref_sims, atol=2e-6)
    gaps = np.abs(np.diff(ref_sims, axis=1)) > 1e-5  # where float32 rounding cannot swap two
    assert ((rows == ref_rows) | ~np.pad(gaps, ((0, 0), (0, 1)), constant_values=True)).all()
    assert (rows == ref_rows).mean() > 0.99
    faiss_sims, faiss_rows = EmbeddingIndex(x, [""] * len(x), method="exact").search(q, 10)
    np.testing.assert_array_equal(rows, faiss_rows)
    np.testing.assert_allclose(sims, faiss_sims, atol=1e-6)


def test_search_items_names_rows_like_an_index_folder(tied):
    index, x, q, copies = tied
    (hits,) = index.search_items(q[:1], 3)
    assert [h.index for h in hits] == copies[:3]
    assert [h.item for h in hits] == [f"class_{i % 7}/img_{i}.png" for i in copies[:3]]
    assert [h.label for h in hits] == [i % 7 for i in copies[:3]]
    assert all(abs(h.similarity - 1.0) < 1e-5 for h in hits)
    with pytest.raises(ValueError, match="dimension 5 but collection tied"):
        index.search(np.ones((1, 5)), 3)
    # k larger than the collection is cut to it, as for an index folder.
    assert index.search(q[:1], 5000)[1].shape == (1, 2000)


@pytest.fixture(scope="module")
def approximate(tmp_path_factory):
    x, _ = clustered(4000, 32, seed=0)
    q, _ = clustered(300, 32, seed=1)
    uri = str(tmp_path_factory.mktemp("milvus_ann") / "ann.db")
    items = [f"img_{i}.png" for i in range(len(x))]
    built = {
        method: (
            MilvusIndex.create(uri, method, x, items, method=method, **params),
            EmbeddingIndex(x, items, method=method, **params),
        )
        for method, params in (("ivf", {"nlist": 64, "nprobe": 8}), ("hnsw", {"ef": 32}))
    }
    yield built, x, q, brute_force(x, q, 10)[1], uri
    for index, _ in built.values():
        index.close()


@pytest.mark.parametrize(
    "method, setting, everything",
    [("ivf", "nprobe", 64), ("hnsw", "ef", 2000)],
)
def test_approximate_recall_matches_faiss(approximate, method, setting, everything):
    built, _, q, truth, _ = approximate
    milvus, faiss_index = built[method]
    for value in (None, 4 if method == "ivf" else 16):
        given = {} if value is None else {setting: value}
        ours = recall(milvus.search(q, 10, **given)[1], truth)
        theirs = recall(faiss_index.search(q, 10, **given)[1], truth)
        assert abs(ours - theirs) <= RECALL_TOLERANCE, (given, ours, theirs)
        assert ours < 0.999  # approximate at these settings: the setting reaches Milvus
    assert recall(milvus.search(q, 10, **{setting: everything})[1], truth) >= 0.995


def test_collection_holds_the_milvus_index_asked_for(approximate):
    built, _, _, _, uri = approximate
    client = pymilvus.MilvusClient(uri)
    ivf = client.describe_index("ivf", "embedding")
    hnsw = client.describe_index("hnsw", "embedding")
    assert (ivf["index_type"], ivf["metric_type"], int(ivf["params"]["nlist"])) == (
        "IVF_FLAT", "IP", 64,
    )  # fmt: skip
    assert (hnsw["index_type"], hnsw["metric_type"]) == ("HNSW", "IP")
    params = built["hnsw"][0].method_params
    assert (int(hnsw["params"]["M"]), int(hnsw["params"]["efConstruction"])) == (
        params["M"], params["ef_construction"],
    )  # fmt: skip
    assert built["ivf"][0].method_params == {
        "method": "ivf", "milvus_index": "IVF_FLAT", "nlist": 64, "nprobe": 8,
    }  # fmt: skip


def test_add_is_all_at_once_and_never_twice(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((320, 16)).astype(np.float32)
    uri = str(tmp_path / "add.db")
    items = [f"img_{i}.png" for i in range(320)]
    index = MilvusIndex.create(uri, "grow", x[:200], items[:200], meta={"note": "kept"})
    assert index.add(x[200:300], items[200:300]) == 100
    assert len(index) == 300
    with pytest.warns(UserWarning, match="100 of the 100 images are in collection grow already"):
        assert index.add(x[200:300], items[200:300]) == 0
    with pytest.warns(UserWarning, match="20 of the 40 images"):
        assert index.add(x[280:], items[280:]) == 20
    assert len(index) == 320
    sims, rows = index.search(x, 1)
    assert rows[:, 0].tolist() == list(range(320))  # each row once, in the order added
    count = pymilvus.MilvusClient(uri).query("grow", filter="", output_fields=["count(*)"])[0][
        "count(*)"
    ]
    assert count == 320
    with pytest.raises(ValueError, match="dimension 8 but collection grow .* 16-dimensional"):
        index.add(np.ones((1, 8)), ["other.png"])
    assert MilvusIndex.open(uri, "grow").meta == {"note": "kept"}
    index.close()


def test_live_writer_is_refused_and_a_dead_ones_lease_taken_over(tmp_path):
    x = np.random.default_rng(4).standard_normal((20, 8)).astype(np.float32)
    uri = str(tmp_path / "lease.db")
    index = MilvusIndex.create(uri, "leased", x[:10], [f"{i}" for i in range(10)])
    client = pymilvus.MilvusClient(uri)
    live = {"token": "t", "host": socket.gethostname(), "pid": os.getpid(), "action": "index add",
            "started": "now"}  # fmt: skip
    client.alter_collection_properties("leased", properties={KEY["writer"]: json.dumps(live)})
    with pytest.raises(FolderBusyError, match=f"process {os.getpid()} on"):
        index.add(x[10:], [f"{i}" for i in range(10, 20)])
    assert len(MilvusIndex.open(uri, "leased")) == 10
    dead = dict(live, pid=2**22 + 12345)  # above Linux's pid_max default: no such process
    client.alter_collection_properties("leased", properties={KEY["writer"]: json.dumps(dead)})
    assert index.add(x[10:], [f"{i}" for i in range(10, 20)]) == 10
    props = client.describe_collection("leased")["properties"]
    assert props[KEY["writer"]] == "" and props[KEY["num_items"]] == "20"
    index.close()


def test_foreign_collection_is_refused_and_untouched(tmp_path):
    uri = str(tmp_path / "foreign.db")
    client = pymilvus.MilvusClient(uri)
    client.create_collection("theirs", dimension=4)
    client.insert("theirs", [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4]}])
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="collection theirs at .* is not a rankedlist index"):
        MilvusIndex.create(uri, "theirs", x, list("abcd"))
    with pytest.raises(ValueError, match="is not a rankedlist index"):
        MilvusIndex.open(uri, "theirs")
    assert client.query("theirs", filter="", output_fields=["count(*)"])[0]["count(*)"] == 1
    with pytest.raises(FileNotFoundError, match="has no collection missing .*theirs"):
        MilvusIndex.open(uri, "missing")


def test_failed_build_leaves_the_old_collection(tmp_path, monkeypatch):
    from rankedlist.retrieval import milvus_rows

    x = np.random.default_rng(5).standard_normal((50, 8)).astype(np.float32)
    uri = str(tmp_path / "keep.db")
    MilvusIndex.create(uri, "kept", x[:10], [f"{i}" for i in range(10)]).close()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(milvus_rows, "write_rows", broken)
    with pytest.raises(OSError):
        MilvusIndex.create(uri, "kept", x, [f"{i}" for i in range(50)])
    monkeypatch.undo()
    index = MilvusIndex.open(uri, "kept")
    assert len(index) == 10 and index.search(x[:10], 1)[1][:, 0].tolist() == list(range(10))
    assert pymilvus.MilvusClient(uri).list_collections() == ["kept"]  # the half build is gone
    assert index.add(x[10:12], ["10", "11"]) == 2  # and no lease is left behind
    index.close()


def test_unreachable_server_is_one_error_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    start = time.monotonic()
    with pytest.raises(
        ConnectionError, match=f"cannot reach the Milvus server at http://127.0.0.1:{port}"
    ):
        MilvusIndex.open(f"http://127.0.0.1:{port}", "any", timeout=3)
    assert time.monotonic() - start < 6


def test_build_killed_between_drop_and_rename_is_settled_on_open(tmp_path):
    from rankedlist.retrieval.milvus_collection import build_name

    x = np.random.default_rng(6).standard_normal((30, 8)).astype(np.float32)
    uri = str(tmp_path / "settle.db")
    index = MilvusIndex.create(uri, "photos", x, [f"{i}" for i in range(30)])
    # What a kill leaves after the old collection is dropped: the complete new one, unrenamed.
    pymilvus.MilvusClient(uri).rename_collection("photos", build_name("photos"))
    index.close()
    settled = MilvusIndex.open(uri, "photos")
    assert len(settled) == 30
    assert settled.search(x, 1)[1][:, 0].tolist() == list(range(30))
    assert pymilvus.MilvusClient(uri).list_collections() == ["photos"]
    settled.close()
