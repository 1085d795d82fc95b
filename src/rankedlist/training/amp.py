"""Mixed precision: the autocast context and the gradient scaler for ``train.amp``.

``bf16`` runs on CPU and CUDA and needs no loss scaling (bfloat16 has float32's exponent range);
``fp16`` is CUDA only and uses a ``GradScaler`` so that small gradients do not underflow. Losses are
always computed in float32 outside autocast (the trainer casts the head outputs), because the
ranked-list weights exp(Tn * (alpha - d)) overflow float16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["autocast", "make_grad_scaler", "check_amp"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, device: torch.device) -> None:
    """Raise ``ValueError`` for an unknown mode or float16 on a device without it."""
    if amp not in ("none", *_DTYPES):
        raise ValueError(f"train.amp = {amp!r} is unknown; choose none, bf16 or fp16")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"train.amp = fp16 needs a CUDA device (this run uses {device}); use train.amp=bf16 "
            "on CPU, or train.amp=none"
        )


@contextlib.contextmanager
def autocast(amp: str, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` with the configured dtype, or nothing for ``amp="none"``."""
    check_amp(amp, device)
    if amp == "none":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[amp]):
        yield


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A scaler that is active for fp16 only (a disabled one is a pass-through)."""
    check_amp(amp, device)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
