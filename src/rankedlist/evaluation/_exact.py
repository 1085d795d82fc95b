"""The float32 cosine similarity every exact path of ``retrieval_metrics`` ranks by.

For float32 embeddings ``x`` and ``y`` the similarity is defined as ``fl32(<x, y>)``: the exact
dot product (every ``x_k * y_k`` and their sum taken without rounding) rounded once to the
nearest float32, ties to even. This is *the* float32 value of the cosine: it does not depend on
a BLAS library, its blocking, the shape of the product it is part of or the number of threads,
and ``S[i, j] == S[j, i]`` exactly.

A float32 GEMM gives that value to within about ``D * 2**-24`` (it rounds as it accumulates);
which of two adjacent float32 values it returns is not defined. With OpenBLAS, for instance,
``(X[a] @ X[b].T)[0, 0]`` and ``(X @ X.T)[a, b]`` differ in the last bit for most pairs when the
first product is small (a different kernel) or, for some embedding sizes, when the thread count
differs. Any ranking built on "the GEMM's float32 values" therefore changes with the call
pattern; ranking by ``fl32(<x, y>)`` does not, so the screened evaluation can recompute any
single entry and get the same bits as a brute-force reference.

How it is computed: float32 products are exact in float64 (24 + 24 significand bits), so a
float64 dot product is within ``gamma_D * sum |x_k y_k| <= gamma_D * |x| |y|`` of the exact value
(``gamma_D = D 2**-53 / (1 - D 2**-53)``, any summation order). Rounding that to float32 gives
``fl32(<x, y>)`` unless the exact value may lie on the other side of a rounding boundary (a
midpoint between two float32 numbers): for such entries (about one in 10**5 for unit vectors,
and exact zeros) the exact value is summed again with ``math.fsum`` (correctly rounded float64)
and, when that lands on a midpoint, its sign against the midpoint decides.
"""

from __future__ import annotations

import math

import numpy as np

_U64 = 2.0**-53


def _gamma64(d: int) -> float:
    """Relative error bound of a float64 sum of ``d`` exact terms, in any order."""
    return d * _U64 / (1.0 - d * _U64)


def _exact_fl32(a: np.ndarray, b: np.ndarray) -> np.float32:
    """``fl32(<a, b>)`` for two float32 vectors, by exact summation (slow, for rare entries)."""
    prods = (a.astype(np.float64) * b.astype(np.float64)).tolist()  # each product is exact
    r = math.fsum(prods)  # the exact sum, correctly rounded to float64
    r32 = np.float32(r)
    lo = r32 if float(r32) <= r else np.nextafter(r32, np.float32(-np.inf))
    hi = np.nextafter(lo, np.float32(np.inf))
    if float(lo) + float(hi) == 2.0 * r and np.isfinite(hi):
        # r is the midpoint of two float32 numbers: the exact value may lie on either side.
        residual = math.fsum([*prods, -r])
        if residual > 0:
            r32 = hi
        elif residual < 0:
            r32 = lo
        # residual == 0: exactly the midpoint, np.float32(r) already rounded it to even
    return np.float32(r32 + np.float32(0.0))  # +0.0 turns -0.0 into 0.0


def round_to_fl32(
    s64: np.ndarray,
    bound: np.ndarray | float,
    refine: callable,  # type: ignore[valid-type]
) -> np.ndarray:
    """float32 values ``fl32(exact)`` from float64 estimates within ``bound`` of ``exact``.

    ``refine(positions)`` returns the exact float32 values of the entries (flat positions of
    ``s64``) where the estimate cannot decide the rounding.
    """
    s32 = s64.astype(np.float32)
    v = s32.astype(np.float64)
    up = np.nextafter(s32, np.float32(np.inf)).astype(np.float64)
    dn = np.nextafter(s32, np.float32(-np.inf)).astype(np.float64)
    # Midpoints of float32 neighbours are exact in float64, and so are these differences
    # wherever they are comparable to the bound (both numbers then share sign and binade).
    margin = np.asarray(bound, dtype=np.float64) * 2.0 + 1e-300
    ok = ((s64 - (v + dn) * 0.5) > margin) & (((v + up) * 0.5 - s64) > margin)
    ok &= np.isfinite(up) & np.isfinite(dn)
    out = s32 + np.float32(0.0)
    bad = np.flatnonzero(~ok.reshape(-1))
    if bad.size:
        out.reshape(-1)[bad] = refine(bad)
    return out


def exact_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``fl32(<a_i, b_j>)`` for every row ``a_i`` of ``a`` (n, D) and ``b_j`` of ``b`` (m, D)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    s64 = a64 @ b64.T
    na = np.sqrt(np.einsum("ij,ij->i", a64, a64))
    nb = np.sqrt(np.einsum("ij,ij->i", b64, b64))
    bound = _gamma64(a.shape[1]) * (1 + 1e-6) * na[:, None] * nb[None, :]
    m = b.shape[0]

    def refine(pos: np.ndarray) -> np.ndarray:
        return np.array([_exact_fl32(a[p // m], b[p % m]) for p in pos], dtype=np.float32)

    return round_to_fl32(s64, bound, refine)


def exact_batched(
    a: np.ndarray, b: np.ndarray | None, na: np.ndarray, nb: np.ndarray
) -> np.ndarray:
    """``fl32`` similarities of batched blocks: ``a`` (B, n, D) against ``b`` (B, m, D).

    ``b=None`` means ``b is a``; ``na`` (B, n) and ``nb`` (B, m) are the rows' float64 norms.
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    a64 = a.astype(np.float64)
    if b is None:
        b, b64 = a, a64
    else:
        b = np.ascontiguousarray(b, dtype=np.float32)
        b64 = b.astype(np.float64)
    # One small BLAS product per block (numpy's stacked matmul does not use BLAS for these
    # strides); callers run it under a one-thread BLAS limit, threads only cost here.
    s64 = np.empty((a.shape[0], a.shape[1], b.shape[1]))
    for i in range(a.shape[0]):
        np.matmul(a64[i], b64[i].T, out=s64[i])
    bound = _gamma64(a.shape[2]) * (1 + 1e-6) * na[:, :, None] * nb[:, None, :]
    n, m = a.shape[1], b.shape[1]

    def refine(pos: np.ndarray) -> np.ndarray:
        bi, rest = pos // (n * m), pos % (n * m)
        return np.array(
            [_exact_fl32(a[x, r // m], b[x, r % m]) for x, r in zip(bi, rest, strict=True)],
            dtype=np.float32,
        )

    return round_to_fl32(s64, bound, refine)


def exact_pairs(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    na: np.ndarray,
    nb: np.ndarray,
    chunk: int = 16384,
) -> np.ndarray:
    """``fl32(<a[rows[p]], b[cols[p]]>)`` for each pair ``p``; ``na``, ``nb``: row norms."""
    out = np.empty(rows.shape[0], dtype=np.float32)
    g = _gamma64(a.shape[1]) * (1 + 1e-6)
    for s in range(0, rows.shape[0], chunk):
        r, c = rows[s : s + chunk], cols[s : s + chunk]
        ar, bc = a[r], b[c]  # float32 gathers: half the memory traffic of float64 ones
        s64 = np.einsum("ij,ij->i", ar, bc, dtype=np.float64)  # exact products, f64 sums

        def refine(pos: np.ndarray, ar=ar, bc=bc) -> np.ndarray:
            return np.array([_exact_fl32(ar[p], bc[p]) for p in pos], dtype=np.float32)

        out[s : s + chunk] = round_to_fl32(s64, g * na[r] * nb[c], refine)
    return out
