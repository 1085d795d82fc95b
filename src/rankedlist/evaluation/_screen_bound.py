"""The screen's rigorous per-entry error bound, and how entries are screened (``_screened``).

Every entry is screened once at low precision and compared, on its bits, with a per-query
threshold; what makes that comparison safe is a bound on the screened value's error.

**Screen.** ``S~ = bf16(q) @ bf16(g).T`` (bf16 inputs and output, float32 accumulation) on
every entry. With ``e_i = |bf16(x_i) - x_i|`` and ``n_i = |x_i|`` (float64, from the actual
vectors, not assumed unit),

    |S~_ij - S_ij| <= e_i n_j + n_i e_j + e_i e_j      (input rounding, Cauchy-Schwarz)
                   + gamma_D |bf16(x_i)| |bf16(x_j)|    (float32 accumulation, any order,
                                                          2**-23 per addition: also truncation)
                   + 2**-7 |S~_ij| / (1 - 2**-7)        (bf16 output: also truncation)
                   + 2**-24 n_i n_j                     (the float32 rounding of S itself)

taken with the maxima over all rows (``_Bound``): about 0.004 + 0.008 |S~| for unit vectors
in 512 dimensions. Each entry thus has an interval ``[lo, hi]`` that contains ``S``. When
relevant lists are long (``choose_kind``: CUB, Cars) that interval holds a relevant value too
often; the screen is then a float32 product (numpy's BLAS), bound ``gamma_D n_i n_j + 2**-24``.

``choose_kind`` picks between the two; ``Screen`` holds the chosen products and compares
their bits with the thresholds (rounded down, so the comparison only keeps more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rankedlist.evaluation._inputs import RetrievalProblem


@dataclass(frozen=True)
class _Bound:
    """``|S~ - S| <= e0 + rho |S~|`` for every entry (see the module docstring)."""

    e0: float
    rho: float

    def lower(self, v: np.ndarray) -> np.ndarray:
        if self.rho == 0:  # no 0 * inf for the -inf of left-out entries
            return v - self.e0
        return v - self.e0 - self.rho * np.abs(v)

    def upper(self, v: np.ndarray) -> np.ndarray:
        if self.rho == 0:
            return v + self.e0
        return v + self.e0 + self.rho * np.abs(v)

    def inv_upper(self, t: np.ndarray) -> np.ndarray:
        """Largest threshold ``x`` with ``upper(v) >= t  =>  v >= x`` (monotone inverse)."""
        d = t - self.e0
        x = np.where(d >= 0, d / (1 + self.rho), d / (1 - self.rho))
        return x - 1e-12 * (1 + np.abs(x))


def norm_stats(x: np.ndarray, xh: torch.Tensor | None) -> tuple[np.ndarray, float, float, float]:
    """float64 norms of the rows of ``x``; the largest norm, largest ``|bf16(x) - x|`` and
    largest ``|bf16(x)|`` (``xh``: the bf16 copy, or ``None``: both 0). In cache-sized chunks.
    """
    norms = np.empty(x.shape[0])
    e_max = nh_max = 0.0
    for s in range(0, x.shape[0], 2048):
        v = x[s : s + 2048]
        norms[s : s + 2048] = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))
        if xh is not None:
            h = _bits_to_f32(xh[s : s + 2048].view(torch.int16).numpy())
            d = h - v  # exact in float32: the bits the rounding dropped
            e_max = max(e_max, float(np.einsum("ij,ij->i", d, d, dtype=np.float64).max()))
            nh_max = max(nh_max, float(np.einsum("ij,ij->i", h, h, dtype=np.float64).max()))
    return norms, float(norms.max()), math.sqrt(e_max), math.sqrt(nh_max)


def error_bound(
    d: int, q_stats: tuple[float, float, float], g_stats: tuple[float, float, float], kind: str
) -> _Bound:
    """The screen's error bound for ``kind`` (``"bf16"`` or ``"float32"`` products), from the
    (largest norm, largest bf16 rounding error norm, largest bf16 norm) of queries and gallery.
    """
    (nq, eq, nhq), (ng, eg, nhg) = q_stats, g_stats
    u_acc = 2.0**-23  # per float32 addition; covers truncation as well as rounding
    gamma = d * u_acc / (1 - d * u_acc)
    if kind == "float32":
        e0 = gamma * nq * ng + 2.0**-24 * nq * ng + 1e-30 * d
        return _Bound(e0=e0 * (1 + 2.0**-20) + 2.0**-60, rho=0.0)
    e0 = eq * ng + nq * eg + eq * eg + gamma * nhq * nhg + 2.0**-24 * nq * ng + 1e-30 * d
    rho = 2.0**-7 / (1 - 2.0**-7)
    return _Bound(e0=e0 * (1 + 2.0**-20) + 2.0**-60, rho=rho * (1 + 2.0**-20))


def choose_kind(problem: RetrievalProblem) -> str:
    """bf16 screening unless relevant lists are long (CUB, Cars: R ~ 60-100).

    With many relevant items per query, a bf16 interval (about +-0.005) often holds one of
    them and the exact recomputations would cost more than the float32 products they save.
    """
    valid = problem.num_relevant[problem.num_relevant > 0]
    mean_r = float(valid.mean()) if valid.size else 0.0
    return "float32" if mean_r > 16 else "bf16"


@dataclass(frozen=True)
class Screen:
    """How entries are screened: bf16 products compared on their int16 bits, or float32
    products (numpy's BLAS) compared on their int32 bits."""

    kind: str
    q: torch.Tensor  # the operands of the products
    g: torch.Tensor
    bound: _Bound

    @property
    def never(self) -> int:
        return 32767 if self.kind == "bf16" else 2**31 - 1

    @property
    def never_bits(self) -> int:
        """The bits of -inf (as the integer type of the bits)."""
        return -128 if self.kind == "bf16" else -8388608

    @property
    def key_dtype(self) -> type:
        return np.int16 if self.kind == "bf16" else np.int32

    def product(self, s: int, e: int, c0: int, flat: torch.Tensor) -> np.ndarray:
        """Bits of ``q[s:e] @ g[c0:].T`` written into the front of ``flat``."""
        b, w = e - s, self.g.shape[0] - c0
        out = flat[: b * w].view(b, w)
        if self.kind == "bf16":
            torch.mm(self.q[s:e], self.g[c0:].T, out=out)
            return out.view(torch.int16).numpy()
        np.matmul(self.q[s:e].numpy(), self.g[c0:].numpy().T, out=out.numpy())
        return out.view(torch.int32).numpy()

    def sample_product(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float32 values of ``q[rows] @ g[cols].T``, screened the same way."""
        qr = self.q.index_select(0, torch.from_numpy(rows))
        gc = self.g.index_select(0, torch.from_numpy(cols))
        if self.kind == "bf16":
            return _bits_to_f32(torch.mm(qr, gc.T).view(torch.int16).numpy())
        return np.matmul(qr.numpy(), gc.numpy().T)

    def to_float(self, bits: np.ndarray) -> np.ndarray:
        return _bits_to_f32(bits) if self.kind == "bf16" else bits.view(np.float32)

    def keys(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer thresholds on the bits (rounded down) and the rows that need a float compare.

        Positive thresholds compare as integers on the bits; infinite ones get ``never``; the
        others (zero or negative) are flagged for a float comparison.
        """
        pos = np.isfinite(theta) & (theta > 0)
        t32 = down32(np.where(pos, theta, 1.0))
        bits = t32.view(np.int32)
        if self.kind == "bf16":
            bits = bits >> 16  # truncation of a positive number: rounds down
        key = np.where(pos, bits, self.never).astype(self.key_dtype)
        slow = np.isfinite(theta) & ~pos
        return key, slow

    def key_value(self, key: np.ndarray) -> np.ndarray:
        val = self.to_float(key.astype(self.key_dtype))
        return np.where(key == self.never, np.float32(np.inf), val)


def down32(v: np.ndarray) -> np.ndarray:
    """float32 values of ``v`` rounded down (never above ``v``)."""
    v32 = v.astype(np.float32)
    return np.where(v32.astype(np.float64) > v, np.nextafter(v32, np.float32(-np.inf)), v32)


def up32(v: np.ndarray) -> np.ndarray:
    """float32 values of ``v`` rounded up (never below ``v``)."""
    v32 = v.astype(np.float32)
    return np.where(v32.astype(np.float64) < v, np.nextafter(v32, np.float32(np.inf)), v32)


def _bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bf16 bits (the upper half of a float32)."""
    return (bits.astype(np.int32) << 16).view(np.float32)
