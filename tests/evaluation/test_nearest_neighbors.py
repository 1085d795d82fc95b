"""nearest_neighbors: both back ends against a stable-argsort reference; the metrics they imply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankedlist.evaluation import nearest_neighbors, retrieval_metrics


def quantised(n, dim, seed, n_dups=0):
    """+-1 entries, four per row: every cosine is an exact multiple of 1/4 (ties everywhere)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        x[i, rng.choice(dim, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    if n_dups:
        x[rng.choice(n, n_dups, replace=False)] = x[rng.integers(0, n, n_dups)]
    return x


def reference_knn(q, g, k, exclude_self):
    """Full matrix, stable argsort by descending cosine, own item removed by index."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ gn.T.astype(np.float64)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    for i in range(q.shape[0]):
        cand = np.arange(g.shape[0])
        if exclude_self:
            cand = cand[cand != i]
        idx[i] = cand[np.argsort(-sims[i, cand], kind="stable")[:k]]
    return np.take_along_axis(sims, idx, 1), idx


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_ties_match_reference_exactly(backend, exclude_self, k):
    x = quantised(120, 8, seed=k, n_dups=25)
    sims, idx = nearest_neighbors(
        x, None, k, exclude_self=exclude_self, backend=backend, chunk_size=17
    )
    want_sims, want_idx = reference_knn(x, x, k, exclude_self)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(sims, want_sims.astype(np.float32))
    assert sims.dtype == np.float32 and idx.dtype == np.int64


@pytest.mark.parametrize("k", [1, 7, 60])
def test_backends_identical_on_random_data(k):
    rng = np.random.default_rng(k)
    q = rng.standard_normal((70, 24)).astype(np.float32)
    g = rng.standard_normal((90, 24)).astype(np.float32)
    f_sims, f_idx = nearest_neighbors(q, g, k, backend="faiss")
    t_sims, t_idx = nearest_neighbors(torch.from_numpy(q), torch.from_numpy(g), k, backend="torch")
    np.testing.assert_array_equal(f_idx, t_idx.numpy())
    np.testing.assert_allclose(f_sims, t_sims.numpy(), atol=1e-6)
    _, want_idx = reference_knn(q, g, k, False)
    np.testing.assert_array_equal(f_idx, want_idx)


def test_metrics_from_both_backends_are_identical():
    # Metrics recomputed from each back end's full neighbour lists equal retrieval_metrics.
    rng = np.random.default_rng(3)
    x = quantised(150, 8, seed=3, n_dups=20)
    y = rng.integers(0, 15, size=150)
    want = retrieval_metrics(x, y, ks=(1, 4, 16))
    for backend in ("faiss", "torch"):
        _, idx = nearest_neighbors(x, None, 149, exclude_self=True, backend=backend)
        rel = y[idx] == y[:, None]
        r = rel.sum(1)
        ok = r > 0
        rel, r = rel[ok], r[ok]
        top = rel & (np.arange(1, 150)[None, :] <= r[:, None])
        prec = np.cumsum(top, 1) / np.arange(1, 150)
        got = {f"recall@{k}": rel[:, :k].any(1).mean() for k in (1, 4, 16)}
        got["r_precision"] = (top.sum(1) / r).mean()
        got["map@r"] = ((prec * top).sum(1) / r).mean()
        got["lone_queries"] = int((~ok).sum())
        assert got == pytest.approx(want, abs=1e-12), backend


def test_returns_tensors_on_the_query_device_for_tensor_input():
    x = torch.randn(20, 6, dtype=torch.float64)
    sims, idx = nearest_neighbors(x, x[:10], 3)
    assert isinstance(sims, torch.Tensor) and sims.dtype == torch.float32
    assert idx.dtype == torch.int64 and idx.shape == (20, 3)
    # Auto picks faiss on CPU; the answer equals the torch back end's.
    t_sims, t_idx = nearest_neighbors(x, x[:10], 3, backend="torch")
    assert torch.equal(idx, t_idx) and torch.allclose(sims, t_sims, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    x = quantised(200, 8, seed=9, n_dups=30)
    cpu = nearest_neighbors(x, None, 10, exclude_self=True, backend="faiss")
    gpu = nearest_neighbors(torch.from_numpy(x).cuda(), None, 10, exclude_self=True)
    assert gpu[1].device.type == "cuda"
    np.testing.assert_array_equal(cpu[1], gpu[1].cpu().numpy())


X = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((X, None, 8), {"exclude_self": True}, ValueError, r"k must be in \[1, 7\]"),
        ((X, None, 0), {}, ValueError, "k must be in"),
        ((X, X[:4], 5), {}, ValueError, "k must be in"),
        ((X, None, 2.0), {}, TypeError, "k must be an int"),
        ((X, X[:, :3], 2), {}, ValueError, "dimension"),
        ((X, X[:5], 2), {"exclude_self": True}, ValueError, "exclude_self"),
        ((X, None, 2), {"backend": "annoy"}, ValueError, "backend"),
        ((X[:, 0], None, 2), {}, ValueError, "2-D"),
        ((X * np.nan, None, 2), {}, ValueError, "NaN"),
    ],
)
def test_bad_input_raises(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        nearest_neighbors(*args, **kwargs)
