"""EmbeddingIndex: exact search against brute force, atomic save/load, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _retrieval_helpers import listing

from rankedlist.retrieval import EmbeddingIndex
from rankedlist.retrieval import embedding_index as ei


def brute_force_topk(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self=False):
    """Reference: float64 cosine similarities by elementwise products, stable descending sort
    (ties: lower gallery row first)."""
    q = queries.astype(np.float64)
    g = gallery.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    s = (q[:, None, :] * g[None, :, :]).sum(-1)
    if exclude_self:
        s[np.arange(len(q)), np.arange(len(q))] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def tied_data(seed: int = 0, n: int = 150, d: int = 8):
    """Random rows where a third are exact copies of others (exact ties in every list)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    copies = rng.choice(n, size=n // 3, replace=False)
    x[copies] = x[rng.integers(0, n // 3, size=n // 3)]
    return x


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_search_equals_brute_force_with_stable_ties(backend):
    gallery = tied_data(0)
    queries = np.concatenate([gallery[:10], np.random.default_rng(1).normal(size=(20, 8))])
    index = EmbeddingIndex(gallery, [f"item{i}" for i in range(len(gallery))])
    sims, rows = index.search(queries, k=12, backend=backend)
    ref_s, ref_r = brute_force_topk(queries, index.embeddings, 12)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    assert sims.dtype == np.float32 and rows.dtype == np.int64


def test_search_the_index_against_itself_excluding_self():
    x = tied_data(2)
    index = EmbeddingIndex(x, [str(i) for i in range(len(x))])
    sims, rows = index.search(None, k=5, exclude_self=True)
    ref_s, ref_r = brute_force_topk(index.embeddings, index.embeddings, 5, exclude_self=True)
    np.testing.assert_array_equal(rows, ref_r)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    assert not (rows == np.arange(len(x))[:, None]).any()


def test_embeddings_are_normalised_and_k_is_cut_to_the_index_size():
    x = np.array([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    index = EmbeddingIndex(x, ["a", "b", "c"])
    np.testing.assert_allclose(index.embeddings[0], [0.6, 0.8], rtol=1e-6)
    sims, rows = index.search(np.array([1.0, 0.0]), k=10)  # 1-D query: one row
    assert rows.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(sims, [[0.6, 0.0, -1.0]], atol=1e-6)


def test_search_items_names_the_hits_and_resolves_paths(tmp_path):
    x = np.eye(3, dtype=np.float32)
    index = EmbeddingIndex(x, ["a.png", "sub/b.png", "/abs/c.png"], labels=[0, 1, 1],
                           meta={"images_root": str(tmp_path)})  # fmt: skip
    (hits,) = index.search_items(np.array([[0.0, 1.0, 0.1]]), k=2)
    assert [h.item for h in hits] == ["sub/b.png", "/abs/c.png"]
    assert hits[0].path == tmp_path / "sub" / "b.png"
    assert str(hits[1].path) == "/abs/c.png"  # absolute items are kept
    assert hits[0].label == 1 and hits[0].index == 1
    assert hits[0].similarity == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)


def test_add_appends_rows_and_checks_them():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    index = EmbeddingIndex(a, list("abcde"), labels=[0, 0, 1, 1, 2])
    index.add(b, list("fgh"), labels=[2, 3, 3])
    assert len(index) == 8 and index.items == list("abcdefgh")
    assert index.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    ref_s, ref_r = brute_force_topk(b, np.concatenate([a, b]), 3)
    sims, rows = index.search(b, k=3)
    np.testing.assert_array_equal(rows, ref_r)
    with pytest.raises(ValueError, match="dimension 5 .* 4-dimensional"):
        index.add(rng.normal(size=(1, 5)), ["x"], labels=[0])
    with pytest.raises(ValueError, match="has labels"):
        index.add(rng.normal(size=(1, 4)), ["x"])
    with pytest.raises(ValueError, match="2 entries but there are 1"):
        index.add(rng.normal(size=(1, 4)), ["x", "y"], labels=[0])


def test_wrong_dimension_query_and_bad_inputs_raise_clear_errors():
    index = EmbeddingIndex(np.eye(4), list("abcd"))
    with pytest.raises(ValueError, match="dimension 3 .* D = 4"):
        index.search(np.ones((2, 3)))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.ones(4), k=0)
    with pytest.raises(ValueError, match="queries=None"):
        index.search(np.ones((4, 4)), exclude_self=True)
    with pytest.raises(ValueError, match="all zeros"):
        EmbeddingIndex(np.zeros((2, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingIndex(np.full((1, 4), np.nan), ["a"])
    with pytest.raises(ValueError, match="3 entries but there are 4"):
        EmbeddingIndex(np.eye(4), list("abc"))
    with pytest.raises(ValueError, match="4 labels"):
        EmbeddingIndex(np.eye(4), list("abcd"), labels=[0, 1])
    with pytest.raises(TypeError, match="integers"):
        EmbeddingIndex(np.eye(4), list("abcd"), labels=[0.5, 1, 2, 3])


def test_evaluate_matches_a_naive_recall_at_1():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(6), 5)
    x = rng.normal(size=(6, 8))[labels] + 0.9 * rng.normal(size=(30, 8))
    index = EmbeddingIndex(x, [str(i) for i in range(30)], labels=labels)
    _, ref_r = brute_force_topk(x, x, 1, exclude_self=True)
    naive_r1 = float(np.mean(labels[ref_r[:, 0]] == labels))
    metrics = index.evaluate(ks=(1, 2))
    assert metrics["recall@1"] == pytest.approx(naive_r1)
    with pytest.raises(ValueError, match="no labels"):
        EmbeddingIndex(x, [str(i) for i in range(30)]).evaluate()


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 6)).astype(np.float32)
    meta = {"checkpoint": "/runs/demo/best.pt", "model_spec": {"name": "glyphnet"}}
    index = EmbeddingIndex(x, [f"d/{i}.png" for i in range(7)], labels=np.arange(7) % 3, meta=meta)
    out = index.save(tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == [
        "embeddings.npy", "items.json", "labels.npy", "meta.json",
    ]  # fmt: skip
    saved_meta = json.loads((out / "meta.json").read_text())
    assert saved_meta["embedding_dim"] == 6 and saved_meta["num_items"] == 7
    assert saved_meta["rankedlist_version"] and saved_meta["created"]
    for mmap in (False, True):
        loaded = EmbeddingIndex.load(out, mmap=mmap)
        np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
        assert loaded.items == index.items and loaded.labels.tolist() == index.labels.tolist()
        assert loaded.meta["checkpoint"] == meta["checkpoint"]
        assert loaded.meta["model_spec"] == meta["model_spec"]
        np.testing.assert_array_equal(loaded.search(x[:2], 3)[1], index.search(x[:2], 3)[1])
    # Saving again replaces the index in place, without leftovers beside it.
    index.add(rng.normal(size=(1, 6)), ["new.png"], labels=[0])
    index.save(out)
    assert len(EmbeddingIndex.load(out)) == 8
    assert listing(tmp_path) == ["idx"]


def test_interrupted_save_keeps_the_previous_index_and_no_partial_folder(tmp_path, monkeypatch):
    x = np.eye(3, dtype=np.float32)
    EmbeddingIndex(x, ["a", "b", "c"]).save(tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}

    def exploding_save(fh, arr, *args, **kwargs):
        fh.write(b"half an array")  # some bytes reach the temporary file first
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", exploding_save)
    bigger = EmbeddingIndex(np.ones((5, 3)), list("vwxyz"))
    with pytest.raises(OSError, match="disk full"):
        bigger.save(tmp_path / "idx")
    with pytest.raises(OSError, match="disk full"):
        bigger.save(tmp_path / "fresh")  # a first save leaves nothing at all
    monkeypatch.undo()
    assert listing(tmp_path) == ["idx"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    assert EmbeddingIndex.load(tmp_path / "idx").items == ["a", "b", "c"]


def test_failed_swap_puts_the_previous_index_back(tmp_path, monkeypatch):
    EmbeddingIndex(np.eye(2), ["a", "b"]).save(tmp_path / "idx")
    real_replace = ei.os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new folder into place
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(ei.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        EmbeddingIndex(np.eye(2), ["x", "y"]).save(tmp_path / "idx")
    monkeypatch.undo()
    assert listing(tmp_path) == ["idx"]
    assert EmbeddingIndex.load(tmp_path / "idx").items == ["a", "b"]


def test_save_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not an embedding index"):
        EmbeddingIndex(np.eye(2), ["a", "b"]).save(tmp_path / "photos")
    assert (tmp_path / "photos" / "keep.jpg").exists()


def test_load_names_the_missing_folder_or_file_and_catches_inconsistency(tmp_path):
    with pytest.raises(FileNotFoundError, match="index folder .*nowhere not found"):
        EmbeddingIndex.load(tmp_path / "nowhere")
    out = EmbeddingIndex(np.eye(3), list("abc"), labels=[0, 1, 2]).save(tmp_path / "idx")
    for name in ("embeddings.npy", "items.json", "meta.json", "labels.npy"):
        data = (out / name).read_bytes()
        (out / name).unlink()
        with pytest.raises(FileNotFoundError, match=f"{out}.* has no {name}"):
            EmbeddingIndex.load(out)
        (out / name).write_bytes(data)
    (out / "items.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="inconsistent .*embeddings.npy: 3, items.json: 2"):
        EmbeddingIndex.load(out)
    (out / "items.json").write_text(json.dumps(["a", "b", "c"]))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "embedding_dim": 5}))
    with pytest.raises(ValueError, match="embedding_dim 5 .* 3 columns"):
        EmbeddingIndex.load(out)
    (out / "meta.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not the meta file"):
        EmbeddingIndex.load(out)
