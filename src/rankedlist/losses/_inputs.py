"""The loss's options and inputs: their checks, and the records the checked values travel in.

Each bad value raises an error naming it and the fix. :class:`HyperParameters` holds every option
once checked; :class:`RankedLists` what the queries are ranked against (the reference set, the
labels, the pairs left out), from the checks down to the kernels.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from rankedlist.losses._excluded_pairs import Pairs, copy_pairs

__all__ = ["GRADIENTS", "REDUCTIONS", "HyperParameters", "RankedLists"]

GRADIENTS = ("paper", "autograd")
REDUCTIONS = ("mean", "none", "official")


@dataclass(frozen=True)
class HyperParameters:
    """The loss's options, already checked (alpha resolved); see :class:`RankedListLoss`."""

    margin: float
    alpha: float
    Tn: float
    Tp: float
    lam: float
    normalize: bool = True
    gradient: str = "paper"
    reduction: str = "mean"
    chunk_size: int | None = None

    @property
    def b(self) -> float:
        """The positive boundary ``alpha - margin``."""
        return self.alpha - self.margin

    # The per-query loss is kP L_P + kN L_N: the "official" reduction halves both terms.
    @property
    def kP(self) -> float:
        """The weight of ``L_P`` in the per-query loss."""
        return 0.5 if self.reduction == "official" else 1.0

    @property
    def kN(self) -> float:
        """The weight of ``L_N`` in the per-query loss (``lam``, halved by "official")."""
        return (0.5 if self.reduction == "official" else 1.0) * self.lam


@dataclass(frozen=True)
class RankedLists:
    """What the queries are ranked against, checked: everything of a call but the queries.

    ``reference``: the reference set (M x D), ``None`` for the queries themselves.
    ``query_labels``/``reference_labels``: class ids (integers when checked, floats of the
    compute dtype for the kernels: a float compare is the fastest label test).
    ``self_cols``: each query's own reference row (N, long, ``-1`` = none), ``None`` for the
    diagonal of the batch against itself, else no self pair.
    ``excluded``: further ``(query rows, reference rows)`` pairs left out, rows sorted (copies of
    the queries' samples), or ``None``.
    ``memory_gallery``: the reference set is a memory gallery for the paper kernel: its rows are
    checked and normalised already, and most are trivial (each chunk of queries is ranked
    against its candidate rows only).
    """

    reference: torch.Tensor | None
    query_labels: torch.Tensor
    reference_labels: torch.Tensor
    self_cols: torch.Tensor | None = None
    excluded: Pairs | None = None
    memory_gallery: bool = False

    def n_reference(self, n_queries: int) -> int:
        """Rows of the reference set (``n_queries`` when the queries are their own)."""
        return n_queries if self.reference is None else self.reference.shape[0]


def _real(name: str, value: object) -> float:
    """``value`` as a finite float, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_options(
    margin: object,
    alpha: object,
    Tn: object,
    Tp: object,
    lam: object,
    normalize: object,
    gradient: object,
    reduction: object,
    chunk_size: object,
) -> HyperParameters:
    """Validate every option; returns them as hyper-parameters, alpha resolved."""
    m = _real("margin", margin)
    if m < 0:
        raise ValueError(f"margin must be >= 0, got {m}")
    a = 1.0 + m / 2.0 if alpha is None else _real("alpha", alpha)
    if a <= 0:
        raise ValueError(f"alpha must be > 0 (or None for 1 + margin/2), got {a}")
    tn, tp = _real("Tn", Tn), _real("Tp", Tp)
    if tn < 0:
        raise ValueError(f"temperature Tn must be >= 0, got {tn}")
    if tp < 0:
        raise ValueError(f"temperature Tp must be >= 0, got {tp}")
    la = _real("lam", lam)
    if la < 0:
        raise ValueError(f"lam (the weight of the negative term) must be >= 0, got {la}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}: use one of {', '.join(GRADIENTS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(
                f"chunk_size must be a positive number of query rows, got {chunk_size}"
            )
    return HyperParameters(
        margin=m, alpha=a, Tn=tn, Tp=tp, lam=la, normalize=normalize, gradient=gradient,
        reduction=reduction, chunk_size=chunk_size,
    )  # fmt: skip


def check_embeddings(name: str, x: object, normalize: bool) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(
            f"{name} must have at least one feature column, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        return x
    # One pass and one sync for both checks: the row max |x| is NaN/inf iff the row is, 0 iff
    # the row is all zeros.
    row_max = x.detach().abs().amax(1)
    finite, nonzero = torch.stack([torch.isfinite(row_max).all(), (row_max > 0).all()]).tolist()
    if not finite:
        raise ValueError(f"{name} contains NaN or inf values; check the model output")
    if normalize and not nonzero:
        raise ValueError(
            f"{name} has an all-zero row, which cannot be L2-normalised; "
            "fix the model output or pass normalize=False"
        )
    return x


def _check_labels(name: str, y: object, n: int, what: str, device: torch.device) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of integer class ids, got {type(y).__name__}"
        )
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} must hold integers (e.g. torch.long), got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has length {y.shape[0]} but {what} has {n} rows; they must match")
    return y.to(device)


def check_indices(name: str, ids: object, n: int, device: torch.device) -> torch.Tensor:
    """Dataset indices, one per row: a 1-D integer tensor of ``n`` entries, as long on device."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor of dataset indices (one per sample), got "
            f"{type(ids).__name__}: copies of one sample are kept out of each other's ranked "
            "lists by them"
        )
    if ids.dim() != 1 or ids.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {tuple(ids.shape)}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name} must hold integers (dataset indices), got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.long)


def _check_self_index(self_index: object, n: int, m: int, device: torch.device) -> torch.Tensor:
    if not isinstance(self_index, torch.Tensor):
        raise TypeError(f"self_index must be a LongTensor or None, got {type(self_index).__name__}")
    if self_index.dim() != 1 or self_index.shape[0] != n:
        raise ValueError(
            f"self_index must be 1-D with one entry per query ({n}), got shape "
            f"{tuple(self_index.shape)}"
        )
    if self_index.dtype == torch.bool or self_index.is_floating_point() or self_index.is_complex():
        raise TypeError(f"self_index must hold integers (use -1 for none), got {self_index.dtype}")
    self_index = self_index.to(device=device, dtype=torch.long)
    if n > 0 and bool(((self_index < -1) | (self_index >= m)).any()):
        raise ValueError(f"self_index values must lie in [-1, {m - 1}] (rows of the reference set)")
    return self_index


def check_ranked_lists(
    x: torch.Tensor,
    labels: object,
    ref_emb: torch.Tensor | None,
    ref_labels: object,
    self_index: object,
    normalize: bool,
    memory_gallery: bool,
) -> RankedLists:
    """The checked reference set, labels and self rows of the checked queries ``x``.

    ``memory_gallery``: ``ref_emb``'s rows were checked as batch rows already (see
    :class:`RankedLists`)."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("embeddings must contain at least one row (an empty batch has no loss)")
    device = x.device
    labels = _check_labels("labels", labels, n, "embeddings", device)

    self_ref = ref_emb is None or ref_emb is x
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb; pass both or neither")
        ref_labels = labels
    else:
        if not memory_gallery:
            check_embeddings("ref_emb", ref_emb, normalize and not self_ref)
        if ref_emb.device != device:
            raise ValueError(f"ref_emb is on {ref_emb.device} but embeddings on {device}")
        if ref_emb.shape[1] != x.shape[1]:
            raise ValueError(
                f"ref_emb has {ref_emb.shape[1]} features but embeddings {x.shape[1]}; "
                "they must match"
            )
        if ref_labels is None:
            if not self_ref:
                raise ValueError("ref_emb was given without ref_labels; pass both")
            ref_labels = labels
        ref_labels = _check_labels("ref_labels", ref_labels, ref_emb.shape[0], "ref_emb", device)
    m = n if self_ref else ref_emb.shape[0]
    # No self_index: the diagonal when ranking against the batch itself, else nothing.
    self_cols = None if self_index is None else _check_self_index(self_index, n, m, device)
    return RankedLists(
        reference=None if self_ref else ref_emb,
        query_labels=labels,
        reference_labels=ref_labels,
        self_cols=self_cols,
        memory_gallery=memory_gallery,
    )


def excluded_copies(
    indices: object, ref_indices: object, lists: RankedLists, n: int, device: torch.device
) -> Pairs | None:
    """The (query, reference) pairs of one sample other than the self pairs, or None."""
    if indices is None:
        raise ValueError(
            "ref_indices was given without indices; pass the dataset indices of the queries too"
        )
    ids = check_indices("indices", indices, n, device)
    self_ref = lists.reference is None
    if ref_indices is None:
        if not self_ref:
            raise ValueError(
                "indices were given with ref_emb but without ref_indices; pass the dataset index "
                "of every reference row too (ref_indices)"
            )
        ref_ids = ids
    else:
        ref_ids = check_indices("ref_indices", ref_indices, lists.n_reference(n), device)
    self_cols = lists.self_cols
    if self_cols is None and self_ref:
        self_cols = torch.arange(n, device=device)
    return copy_pairs(ids, ref_ids, self_cols)


def float_labels(
    yq: torch.Tensor, yg: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels as floats of ``dtype`` (comparing floats is the fastest label test).

    Ids beyond +-2**24 are not exact in float32: they are first mapped to 0..K-1.
    """
    both = torch.cat([yq, yg])
    limit = 2**53 if dtype == torch.float64 else 2**24
    if both.numel() and (int(both.min()) <= -limit or int(both.max()) >= limit):
        _, both = torch.unique(both, return_inverse=True)
        if both.numel() >= limit:
            dtype = torch.float64
    both = both.to(dtype)
    return both[: yq.shape[0]], both[yq.shape[0] :]
