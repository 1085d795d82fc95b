"""Checks of the loss's options and inputs: each bad value raises an error naming it and the fix."""

from __future__ import annotations

import math
import numbers

import torch

from rankedlist.losses._kernels import HyperParameters

__all__ = ["GRADIENTS", "REDUCTIONS"]

GRADIENTS = ("paper", "autograd")
REDUCTIONS = ("mean", "none", "official")


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


def _check_options(
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
    """Validate every option; returns the hyper-parameters with alpha resolved."""
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
    return HyperParameters(margin=m, alpha=a, Tn=tn, Tp=tp, lam=la)


def _check_embeddings(name: str, x: object, normalize: bool) -> torch.Tensor:
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


def _check_indices(name: str, ids: object, n: int, device: torch.device) -> torch.Tensor:
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


def _float_labels(
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
