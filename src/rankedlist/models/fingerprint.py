"""A short name for a model's weights, to tell whether two models are the same model.

An index records the fingerprint of the model that built it, and a query embedded by another
model is refused (its similarities would mean nothing, without any sign of it). The fingerprint
is a sha256 over the ``state_dict``: every entry's name, dtype, shape and bytes, in the order of
the sorted names, shortened to :data:`FINGERPRINT_LENGTH` hex digits. So it depends on the
weights only: not on the file they came from, the device, or training mode; a checkpoint and
its ONNX export (which carries the fingerprint in its metadata under :data:`ONNX_METADATA_KEY`)
have the same one. A file whose weights cannot be read (an ONNX model exported without the
fingerprint) is named by the sha256 of its bytes instead, as ``"file:"`` + 16 hex digits, which
only ever equals the fingerprint of the same file.

The bottom layer: torch and the standard library only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FILE_FINGERPRINT_PREFIX",
    "FINGERPRINT_LENGTH",
    "ONNX_METADATA_KEY",
    "file_fingerprint",
    "model_fingerprint",
]

FINGERPRINT_LENGTH = 16
FILE_FINGERPRINT_PREFIX = "file:"
#: The ONNX ``metadata_props`` key of an exported model's fingerprint.
ONNX_METADATA_KEY = "rankedlist.model_fingerprint"
# Changing what is hashed changes every fingerprint: bump the tag with it.
_TAG = b"rankedlist model fingerprint 1\n"


def model_fingerprint(model: torch.nn.Module | Mapping[str, Any]) -> str:
    """The fingerprint of a model (or of its ``state_dict``): 16 hex digits."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    digest = hashlib.sha256(_TAG)
    for name in sorted(state):
        value = state[name]
        if not isinstance(value, torch.Tensor):  # a module's "extra state": its text form
            digest.update(f"{name}\0{type(value).__name__}\0{value!r}\n".encode())
            continue
        tensor = value.detach().to("cpu")
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        # The raw bytes, in C order, of any dtype (bfloat16 has no numpy twin): as uint8.
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def file_fingerprint(path: str | os.PathLike) -> str:
    """``"file:"`` + the first 16 hex digits of the sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return FILE_FINGERPRINT_PREFIX + digest.hexdigest()[:FINGERPRINT_LENGTH]
