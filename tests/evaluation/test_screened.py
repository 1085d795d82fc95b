"""The screened back end: exact metrics of the correctly rounded float32 cosines.

The reference here is brute force and independent of the library's exact module: the full
similarity matrix of the (library-normalised) float32 embeddings in float64, rounded to
float32, with every entry near a rounding boundary redone by ``math.fsum``; then a stable
argsort per query. The data are built so that bf16 (about 3 significant digits) cannot
order them: near-duplicates at distances from 1e-7 to 1e-2, exact duplicates under the same
and other labels, and +-1 vectors whose cosines tie exactly.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rankedlist.evaluation._screened as screened_mod
from rankedlist.evaluation import retrieval_metrics
from rankedlist.evaluation._exact import exact_block, exact_pairs
from rankedlist.evaluation._inputs import prepare
from rankedlist.evaluation._screen_bound import error_bound, norm_stats
from rankedlist.evaluation._screened import row_values, screened_rows

# Warnings of invalid values (NaN from inf arithmetic) would be bugs here.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning:rankedlist")

# --------------------------------------------------------------------------- reference


def _fl32_exact(a: np.ndarray, b: np.ndarray) -> np.float32:
    """fl32 of the exact dot product, by exact rational arithmetic (slow; rare entries)."""
    from fractions import Fraction

    exact = sum(Fraction(float(u)) * Fraction(float(v)) for u, v in zip(a, b, strict=True))
    lo = np.float32(float(exact))  # within an ulp; find the two float32 neighbours
    while Fraction(float(lo)) > exact:
        lo = np.nextafter(lo, np.float32(-np.inf))
    while Fraction(float(np.nextafter(lo, np.float32(np.inf)))) <= exact:
        lo = np.nextafter(lo, np.float32(np.inf))
    hi = np.nextafter(lo, np.float32(np.inf))
    mid = (Fraction(float(lo)) + Fraction(float(hi))) / 2
    if exact < mid:
        out = lo
    elif exact > mid:
        out = hi
    else:  # ties to even
        out = lo if int(np.array(lo).view(np.int32)) % 2 == 0 else hi
    return np.float32(out + np.float32(0.0))


def fl32_matrix(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 cosines of normalised float32 rows (brute force)."""
    s64 = q.astype(np.float64) @ g.astype(np.float64).T
    s32 = s64.astype(np.float32)
    # float64 sums of exact products are within 1e-12 here; redo entries that close to a
    # float32 midpoint (or to zero) exactly.
    up = np.nextafter(s32, np.float32(np.inf)).astype(np.float64)
    dn = np.nextafter(s32, np.float32(-np.inf)).astype(np.float64)
    v = s32.astype(np.float64)
    near = (np.abs(s64 - (v + up) / 2) < 1e-12) | (np.abs(s64 - (v + dn) / 2) < 1e-12)
    for i, j in zip(*np.nonzero(near), strict=True):
        s32[i, j] = _fl32_exact(q[i], g[j])
    return s32 + np.float32(0.0)


def normalised(x: np.ndarray) -> np.ndarray:
    return F.normalize(torch.from_numpy(np.asarray(x, dtype=np.float32)), p=2, dim=1).numpy()


def reference(q, q_lab, g=None, g_lab=None, ks=(1, 2, 4, 8)):
    same = g is None
    qn = normalised(q)
    gn = qn if same else normalised(g)
    g_lab = q_lab if same else g_lab
    sims = fl32_matrix(qn, gn)
    sums = {f"recall@{k}": 0.0 for k in ks} | {"r_precision": 0.0, "map@r": 0.0}
    lone = 0
    for i in range(qn.shape[0]):
        cand = np.arange(gn.shape[0])
        if same:
            cand = cand[cand != i]
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
        sums["map@r"] += (np.cumsum(top) / np.arange(1, r + 1) * top).sum() / r
    valid = qn.shape[0] - lone
    return {k: v / valid for k, v in sums.items()} | {"lone_queries": lone}


def assert_same(got, want):
    assert set(got) == set(want)
    assert got["lone_queries"] == want["lone_queries"]
    for key, value in want.items():
        # A single swap anywhere moves MAP@R by far more than 1e-12.
        assert got[key] == pytest.approx(value, abs=1e-12, rel=0), key


# --------------------------------------------------------------------------- data


def near_ties(n, n_classes, dim, seed, noise=1.0, singletons=0):
    """Clusters plus groups of near-duplicates (1e-7 .. 1e-2 apart) and exact duplicates,
    some under other labels: many cosines of a query differ below bf16's resolution."""
    rng = np.random.default_rng(seed)
    y = np.concatenate(
        [rng.integers(0, n_classes, n - singletons), n_classes + np.arange(singletons)]
    )
    x = rng.standard_normal((n_classes + singletons, dim))[y] + noise * rng.standard_normal(
        (n, dim)
    )
    k = n // 4
    src, dst = rng.integers(0, n, k), rng.choice(n, k, replace=False)
    x[dst] = x[src] + 10.0 ** rng.uniform(-7, -2, (k, 1)) * rng.standard_normal((k, dim))
    k = n // 10
    src, dst = rng.integers(0, n, k), rng.choice(n, k, replace=False)
    x[dst] = x[src]  # exact duplicates: equal cosines to every query
    return x.astype(np.float32), y


def plus_minus_one(n, dim, n_classes, seed):
    """Four +-1 entries per row: every cosine is a multiple of 1/4, ties everywhere."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        x[i, rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return x, rng.integers(0, n_classes, n)


# --------------------------------------------------------------------------- tests


def test_reference_helpers_agree_with_the_library_exact_module():
    x, _ = near_ties(120, 10, 24, seed=0)
    xn = normalised(x)
    want = fl32_matrix(xn, xn)
    assert np.array_equal(exact_block(xn, xn), want)
    norms = np.sqrt((xn.astype(np.float64) ** 2).sum(1))
    rows, cols = np.divmod(np.arange(120 * 120), 120)
    assert np.array_equal(exact_pairs(xn, xn, rows, cols, norms, norms), want.reshape(-1))
    assert np.array_equal(want, want.T)  # fl32 of an exact value: symmetric


def test_exact_rounding_at_float32_midpoints():
    # 1 + 2**-24 is halfway between 1 and the next float32: ties to even (1); a hair more
    # rounds up. float64 cannot tell these apart from a plain product: fsum must.
    a = np.array([[1.0, 2.0**-24, 0.0], [1.0, 2.0**-24 + 2.0**-45, 0.0]], dtype=np.float32)
    b = np.array([[1.0, 1.0, 0.0]], dtype=np.float32)
    got = exact_block(a, b)[:, 0]
    assert got[0] == np.float32(1.0)
    assert got[1] == np.nextafter(np.float32(1.0), np.float32(2.0))
    assert got[0] == _fl32_exact(a[0], b[0]) and got[1] == _fl32_exact(a[1], b[0])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk_size", [16, None])
def test_near_ties_and_duplicates_query_set(seed, chunk_size):
    x, y = near_ties(320, 45, 16, seed=seed, singletons=3)
    ks = (1, 2, 10, 100)
    got = retrieval_metrics(x, y, ks=ks, chunk_size=chunk_size, backend="screened")
    assert_same(got, reference(x, y, ks=ks))


@pytest.mark.parametrize("seed", [2, 3])
def test_near_ties_and_duplicates_separate_gallery(seed):
    x, y = near_ties(360, 50, 16, seed=seed)
    q, ql, g, gl = x[:120], y[:120], x[120:], y[120:]
    ks = (1, 5, 30)
    got = retrieval_metrics(q, ql, g, gl, ks=ks, chunk_size=32, backend="screened")
    assert_same(got, reference(q, ql, g, gl, ks=ks))


@pytest.mark.parametrize("kind", ["bf16", "float32"])
@pytest.mark.parametrize("same", [True, False])
def test_both_screens_on_short_and_long_relevant_lists(kind, same):
    # Short lists (R ~ 3) and long ones (R ~ 40), each screened both ways.
    for n_classes, noise in ((90, 1.0), (7, 2.0)):
        x, y = near_ties(300, n_classes, 12, seed=5 + n_classes, noise=noise)
        args = (x, y, None, None) if same else (x[:100], y[:100], x[100:], y[100:])
        ks = (1, 3, 25)
        p = prepare(*args)
        owned = np.flatnonzero(p.num_relevant > 0)
        rank, rel = screened_rows(p, ks, owned, chunk_size=37, kind=kind)
        r_prec, ap = row_values(rel, p.num_relevant[owned])
        want = reference(*args, ks=ks)
        for k in ks:
            assert np.count_nonzero(rank < k) / owned.shape[0] == pytest.approx(
                want[f"recall@{k}"], abs=1e-12
            )
        assert math.fsum(r_prec) / owned.shape[0] == pytest.approx(want["r_precision"], abs=1e-12)
        assert math.fsum(ap) / owned.shape[0] == pytest.approx(want["map@r"], abs=1e-12)


def brute_force_rows(q, q_lab, g=None, g_lab=None):
    """Per non-lone query, in query order, by a float64 loop over its ranked gallery (the
    correctly rounded float32 cosines, ties to the lower gallery index): the 0-based position of
    its first relevant item, the relevance flags of its top R, its R-Precision and its MAP@R."""
    same = g is None
    qn = normalised(q)
    gn = qn if same else normalised(g)
    g_lab = q_lab if same else g_lab
    sims = fl32_matrix(qn, gn)
    rows = []
    for i in range(qn.shape[0]):
        cand = np.array([j for j in range(gn.shape[0]) if not (same and j == i)])
        order = cand[np.argsort(-sims[i, cand].astype(np.float64), kind="stable")]
        rel = g_lab[order] == q_lab[i]
        r = int(rel.sum())
        if r == 0:
            continue
        first = next(pos for pos in range(len(rel)) if rel[pos])
        hits, ap = 0, 0.0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        rows.append((first, rel[:r].copy(), hits / r, ap / r))
    return rows


@pytest.mark.parametrize("kind", ["bf16", "float32"])
def test_tiny_sets_with_long_lists(kind):
    # Fewer candidates than relevant items per query: the pre-pass sample runs out of
    # non-relevant entries (its left-out entries are -inf), every strip is a diagonal one.
    x, y = near_ties(31, 2, 6, seed=11, noise=1.5)
    ks = (1, 2, 30)
    p = prepare(x, y, None, None)
    owned = np.flatnonzero(p.num_relevant > 0)
    rank, rel = screened_rows(p, ks, owned, chunk_size=4, kind=kind)
    r_prec, ap = row_values(rel, p.num_relevant[owned])
    want = brute_force_rows(x, y)
    assert len(want) == owned.shape[0] == rank.shape[0] == rel.shape[0] == 31
    first = np.array([w[0] for w in want])
    assert first.max() >= 2  # some query's first hit is past K = 1 and 2: recall below 1
    for k in ks:  # the rank is exact where it decides a Recall@K: per query
        assert np.array_equal(rank < k, first < k), k
    for row, (_, flags, _, _) in enumerate(want):  # every top-R list, flag by flag
        r = flags.shape[0]
        assert p.num_relevant[owned[row]] == r
        assert np.array_equal(rel[row, :r], flags) and not rel[row, r:].any(), row
    np.testing.assert_allclose(r_prec, [w[2] for w in want], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ap, [w[3] for w in want], rtol=0, atol=1e-12)
    # the public function on the same data: every metric it returns, lone queries included
    got = retrieval_metrics(x, y, ks=ks, chunk_size=4, backend="screened")
    means = {f"recall@{k}": float(np.mean(first < k)) for k in ks}
    means |= {"r_precision": math.fsum(w[2] for w in want) / len(want)}
    means |= {"map@r": math.fsum(w[3] for w in want) / len(want), "lone_queries": 0}
    assert_same(got, means)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_ties(seed):
    x, y = plus_minus_one(160, 8, 20, seed)
    x[::9] = x[1::9][: x[::9].shape[0]]  # duplicates on top of the ties
    ks = (1, 4, 50, 159)
    assert_same(retrieval_metrics(x, y, ks=ks, backend="screened"), reference(x, y, ks=ks))
    q, ql, g, gl = x[:60], y[:60], x[60:], y[60:]
    assert_same(
        retrieval_metrics(q, ql, g, gl, ks=(1, 7), chunk_size=9, backend="screened"),
        reference(q, ql, g, gl, ks=(1, 7)),
    )


def test_negative_similarities_and_thresholds():
    # Every cosine of a query to its class is negative: thresholds at or below zero take
    # the float comparison path.
    rng = np.random.default_rng(4)
    base = rng.standard_normal((1, 10))
    x = np.concatenate(
        [base + 0.05 * rng.standard_normal((20, 10)), -base + 0.05 * rng.standard_normal((20, 10))]
    )
    y = np.tile([0, 1], 20)  # each class split across the two opposite clusters
    ks = (1, 5, 39)
    assert_same(
        retrieval_metrics(x.astype(np.float32), y, ks=ks, chunk_size=8, backend="screened"),
        reference(x, y, ks=ks),
    )


def test_bf16_bound_holds_for_torch_products():
    # The screen's bound against the actual bf16 kernel, on vectors of uneven magnitudes
    # (exercises the per-element rounding) and nearly parallel ones (|S| near 1).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 96)) * np.exp(rng.uniform(-6, 2, (1, 96)))
    x[350:] = x[:350] + 1e-3 * rng.standard_normal((350, 96))
    xn = normalised(x)
    xh = torch.from_numpy(xn).to(torch.bfloat16)
    _, *stats = norm_stats(xn, xh)
    bound = error_bound(96, tuple(stats), tuple(stats), "bf16")
    screened = (xh @ xh.T).float().numpy().astype(np.float64)
    exact = exact_block(xn, xn).astype(np.float64)
    err = np.abs(screened - exact)
    allowed = bound.e0 + bound.rho * np.abs(screened)
    assert (err <= allowed).all()
    assert err.max() > 0.01 * allowed.max()  # and the bound is not absurdly loose


def test_screening_falls_back_to_faiss_when_unsuitable(monkeypatch):
    x, y = near_ties(200, 20, 16, seed=9)
    monkeypatch.setattr(screened_mod, "_MAX_REL_ENTRIES", 10)
    with pytest.warns(RuntimeWarning, match="faiss"):
        got = retrieval_metrics(x, y, ks=(1, 4), backend="screened")
    assert got == retrieval_metrics(x, y, ks=(1, 4), backend="faiss")


def test_auto_picks_screened_for_short_lists_and_faiss_for_long(monkeypatch):
    calls = []
    real = screened_mod.screened_rows

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    rm = sys.modules["rankedlist.evaluation.retrieval_metrics"]  # the package exports the function
    monkeypatch.setattr(rm, "screened_rows", spy)
    short, y_short = near_ties(200, 60, 8, seed=1)
    long, y_long = near_ties(200, 4, 8, seed=1)
    retrieval_metrics(short, y_short)
    assert calls == [1]
    retrieval_metrics(long, y_long)
    assert calls == [1]


def test_profile_reports_phases():
    x, y = near_ties(200, 40, 16, seed=3)
    prof: dict[str, float] = {}
    retrieval_metrics(x, y, ks=(1, 10), profile=prof)
    for key in ("relevant lists", "products", "screen", "decide", "kept entries", "total"):
        assert key in prof
