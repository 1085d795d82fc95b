"""retrieval_metrics against a brute-force numpy reference and against PML's AccuracyCalculator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankedlist.evaluation import retrieval_metrics

# --------------------------------------------------------------------------- reference


def reference_metrics(q, q_lab, g=None, g_lab=None, ks=(1, 2, 4, 8)):
    """Brute force: full similarity matrix, stable argsort per query, own item removed by index."""
    same = g is None
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if same:
        g, g_lab = q, q_lab
    else:
        g = np.asarray(g, dtype=np.float64)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = q @ g.T  # the whole N x M matrix: fine at test sizes
    sums = {f"recall@{k}": 0.0 for k in ks} | {"r_precision": 0.0, "map@r": 0.0}
    lone = 0
    for i in range(q.shape[0]):
        cand = np.arange(g.shape[0])
        if same:
            cand = cand[cand != i]  # own item excluded by index, not by position
        order = cand[np.argsort(-sims[i, cand], kind="stable")]  # ties: lower index first
        rel = g_lab[order] == q_lab[i]
        r = int(rel.sum())
        if r == 0:
            lone += 1
            continue
        for k in ks:
            sums[f"recall@{k}"] += float(rel[:k].any())
        top = rel[:r]
        sums["r_precision"] += top.sum() / r
        precision_at = np.cumsum(top) / np.arange(1, r + 1)
        sums["map@r"] += (precision_at * top).sum() / r
    valid = q.shape[0] - lone
    out = {key: value / valid for key, value in sums.items()}
    out["lone_queries"] = lone
    return out


def assert_metrics_equal(got, want, tol=1e-6):
    assert set(got) == set(want)
    assert got["lone_queries"] == want["lone_queries"]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=tol), key


# --------------------------------------------------------------------------- data


def clustered(n_classes, per_class, dim, noise, seed, singletons=0):
    """Gaussian clusters (no exact ties); ``singletons`` extra classes of one item."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(per_class[0], per_class[1] + 1, size=n_classes)
    labels = np.concatenate(
        [np.repeat(np.arange(n_classes), sizes), n_classes + np.arange(singletons)]
    )
    centers = rng.standard_normal((n_classes + singletons, dim))
    x = centers[labels] + noise * rng.standard_normal((labels.shape[0], dim))
    perm = rng.permutation(labels.shape[0])
    return x[perm].astype(np.float32), labels[perm]


def quantised(n, dim, n_classes, seed, n_dups=0):
    """Vectors with four +-1 entries: normalised entries are +-0.5, every cosine is an exact
    multiple of 1/4 in float32, so ties are everywhere and both sides see the same numbers."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(dim, size=4, replace=False)
        x[i, cols] = rng.choice([-1.0, 1.0], size=4)
    labels = rng.integers(0, n_classes, size=n)
    if n_dups:  # exact duplicates, with the same or another label
        src = rng.integers(0, n, size=n_dups)
        dst = rng.choice(n, size=n_dups, replace=False)
        x[dst] = x[src]
    return x, labels


def first_tie_free(make, seed, gap=1e-6):
    """``make(seed)`` for the first seed from ``seed`` on whose cosines have no near-ties."""
    for s in range(seed, seed + 1000, 7):
        data = make(s)
        x = data[0]
        if no_near_ties(x, x, True, gap):
            return data
    raise AssertionError("no tie-free seed found")


def no_near_ties(q, g, same, gap=1e-6):
    """True when no two cosines of a row are within ``gap`` (float32 rounding cannot reorder)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = qn if same else g / np.linalg.norm(g, axis=1, keepdims=True)
    s = np.sort(qn.astype(np.float64) @ gn.T.astype(np.float64), axis=1)
    return bool((np.diff(s, axis=1) > gap).all())


# --------------------------------------------------------------------------- tests


BACKENDS = ("screened", "faiss", "torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_clusters_match_reference(seed, backend):
    x, y = first_tie_free(lambda s: clustered(16, (1, 9), 16, 1.2, s, singletons=3), seed)
    assert x.shape[0] > 65
    got = retrieval_metrics(x, y, ks=(1, 2, 4, 8, 16, 64), backend=backend)
    want = reference_metrics(x, y, ks=(1, 2, 4, 8, 16, 64))
    assert want["lone_queries"] >= 3  # singleton classes are lone queries
    assert_metrics_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_ties_and_duplicates_match_reference(seed, chunk_size, backend):
    x, y = quantised(150, 8, 25, seed=seed, n_dups=30)
    ks = (1, 2, 4, 8, 32, 149)
    got = retrieval_metrics(
        torch.from_numpy(x), torch.from_numpy(y), ks=ks, chunk_size=chunk_size, backend=backend
    )
    assert_metrics_equal(got, reference_metrics(x, y, ks=ks))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ties_order_by_index(backend):
    # Identical embeddings: the order is the gallery index order, own item skipped.
    x = np.ones((6, 3), dtype=np.float32)
    y = np.array([0, 1, 1, 0, 2, 1])
    got = retrieval_metrics(x, y, ks=(1, 2, 3), backend=backend)
    want = reference_metrics(x, y, ks=(1, 2, 3))
    assert_metrics_equal(got, want)
    # query 0 (label 0): list 1,2,3,... -> first relevant (3) at rank 3: not in top 2
    assert got["lone_queries"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 3])
def test_separate_gallery_matches_reference(seed, backend):
    x, y = first_tie_free(lambda s: clustered(15, (2, 8), 12, noise=1.0, seed=s), seed)
    rng = np.random.default_rng(seed)
    is_query = rng.random(x.shape[0]) < 0.4
    q, ql, g, gl = x[is_query], y[is_query], x[~is_query], y[~is_query]
    q = np.concatenate([q, rng.standard_normal((2, 12)).astype(np.float32)])
    ql = np.concatenate([ql, [1000, 1001]])  # labels absent from the gallery: lone
    assert no_near_ties(q, g, False)
    ks = (1, 5, 10, int(g.shape[0]))
    got = retrieval_metrics(q, ql, g, gl, ks=ks, backend=backend)
    want = reference_metrics(q, ql, g, gl, ks=ks)
    assert got["lone_queries"] >= 2
    assert_metrics_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_separate_gallery_with_ties(backend):
    x, y = quantised(200, 8, 20, seed=5, n_dups=40)
    q, ql, g, gl = x[:70], y[:70], x[70:], y[70:]
    ks = (1, 3, 130)
    got = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=16, backend=backend)
    assert_metrics_equal(got, reference_metrics(q, ql, g, gl, ks=ks))


def test_input_types_and_dtypes_agree():
    x, y = quantised(80, 8, 10, seed=2)
    want = retrieval_metrics(x, y)
    for emb in (torch.from_numpy(x).half(), torch.from_numpy(x).bfloat16(), x.astype(np.float64)):
        for lab in (torch.from_numpy(y), y.astype(np.int32), y.tolist()):
            assert retrieval_metrics(emb, lab) == want  # +-1 vectors survive every float dtype


@pytest.mark.parametrize("lone", [0, 7])
def test_backends_agree_when_most_first_relevants_are_beyond_the_list(lone):
    # Heavy noise: the first relevant item is often far down, so the faiss back end recounts
    # many rows; lone queries are removed before the search (self index remapped).
    x, y = clustered(40, (2, 4), 24, noise=3.0, seed=11, singletons=lone)
    ks = (1, 2, 10, 50)
    fa = retrieval_metrics(x, y, ks=ks, chunk_size=5, backend="faiss")
    to = retrieval_metrics(x, y, ks=ks, backend="torch")
    sc = retrieval_metrics(x, y, ks=ks, chunk_size=5, backend="screened")
    assert fa["recall@2"] < 0.5  # most first relevants lie beyond the 3-long lists
    assert_metrics_equal(fa, to, tol=1e-12)
    assert_metrics_equal(fa, sc, tol=1e-12)
    assert_metrics_equal(fa, reference_metrics(x, y, ks=ks))


def test_gallery_is_query_object_means_self_excluded():
    x, y = clustered(5, (3, 5), 8, noise=0.5, seed=4)
    assert retrieval_metrics(x, y, x, y) == retrieval_metrics(x, y)


def test_every_query_lone_gives_nan_and_warns():
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="lone"):
        out = retrieval_metrics(x, np.arange(4), ks=(1,))
    assert out["lone_queries"] == 4 and np.isnan(out["recall@1"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    x, y = quantised(300, 8, 30, seed=1, n_dups=20)
    cpu = retrieval_metrics(x, y, ks=(1, 4, 100))
    gpu = retrieval_metrics(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), ks=(1, 4, 100))
    assert gpu == cpu
    with pytest.raises(ValueError, match="CPU"):
        retrieval_metrics(torch.from_numpy(x).cuda(), y, backend="faiss")
    with pytest.raises(ValueError, match="CPU"):
        retrieval_metrics(torch.from_numpy(x).cuda(), y, backend="screened")


# --------------------------------------------------------------------------- bad input


GOOD_X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
GOOD_Y = np.arange(10) % 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"query_labels": GOOD_Y[:9]}, ValueError, "same length"),
        ({"query": GOOD_X[0]}, ValueError, "2-D"),
        ({"query": GOOD_X[:, :, None]}, ValueError, "2-D"),
        ({"query": np.where(np.eye(10, 4) > 0, np.nan, GOOD_X)}, ValueError, "NaN"),
        ({"query": np.where(np.eye(10, 4) > 0, np.inf, GOOD_X)}, ValueError, "NaN or infinite"),
        ({"query": GOOD_X[:0], "query_labels": GOOD_Y[:0]}, ValueError, "empty"),
        ({"ks": (1, 10)}, ValueError, "Recall@10"),
        ({"ks": (0,)}, ValueError, "K >= 1"),
        ({"ks": (1.5,)}, TypeError, "ints"),
        ({"query_labels": GOOD_Y.astype(np.float32)}, TypeError, "integers"),
        ({"query_labels": torch.from_numpy(GOOD_Y).float()}, TypeError, "integers"),
        ({"query_labels": GOOD_Y[:, None]}, ValueError, "1-D"),
        ({"query": GOOD_X.tolist()}, TypeError, "torch.Tensor or numpy"),
        ({"gallery": GOOD_X[:, :3], "gallery_labels": GOOD_Y}, ValueError, "dimension"),
        ({"gallery": GOOD_X, "gallery_labels": GOOD_Y[:4]}, ValueError, "same length"),
        (
            {"gallery": GOOD_X[:5] + 1, "gallery_labels": GOOD_Y[:5], "ks": (6,)},
            ValueError,
            "Recall@6",
        ),
        ({"gallery": GOOD_X + 1}, ValueError, "gallery_labels"),
        ({"gallery_labels": GOOD_Y}, ValueError, "without gallery"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"backend": "annoy"}, ValueError, "backend"),
        ({"distributed": True}, ValueError, "process group"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = {"query": GOOD_X, "query_labels": GOOD_Y} | kwargs
    with pytest.raises(error, match=match):
        retrieval_metrics(**args)


# --------------------------------------------------------------------------- PML


@pytest.mark.parametrize("separate", [False, True])
def test_agrees_with_pml_accuracy_calculator(separate):
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    # float32 products by faiss (inside PML) and torch differ by ~1e-8: keep cosines 2e-7 apart.
    x, y = first_tie_free(lambda s: clustered(18, (2, 12), 32, 1.3, s), 7, gap=2e-7)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)  # PML searches by L2: same order on the sphere
    calc = pml.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
    )
    if separate:
        q, ql, g, gl = x[::3], y[::3], np.delete(x, np.s_[::3], 0), np.delete(y, np.s_[::3])
        keep = np.isin(ql, gl)  # PML has no notion of lone queries
        q, ql = q[keep], ql[keep]
        want = calc.get_accuracy(
            torch.from_numpy(q),
            torch.from_numpy(ql),
            torch.from_numpy(g),
            torch.from_numpy(gl),
            ref_includes_query=False,
        )
        got = retrieval_metrics(q, ql, g, gl, ks=(1,))
    else:
        t, tl = torch.from_numpy(x), torch.from_numpy(y)
        want = calc.get_accuracy(t, tl, t, tl, ref_includes_query=True)
        got = retrieval_metrics(x, y, ks=(1,))
    assert got["lone_queries"] == 0
    assert got["recall@1"] == pytest.approx(want["precision_at_1"], abs=1e-6)
    assert got["r_precision"] == pytest.approx(want["r_precision"], abs=1e-6)
    assert got["map@r"] == pytest.approx(want["mean_average_precision_at_r"], abs=1e-6)
    assert 0.2 < got["map@r"] < 0.95  # the data is neither trivial nor hopeless
