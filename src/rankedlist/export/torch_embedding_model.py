"""An exported PyTorch embedding model (a ``.pt2`` program or a TorchScript file) behind the
``embed`` interface :func:`rankedlist.retrieval.embed_images` uses, as
:class:`~rankedlist.export.onnx_model.OnnxEmbeddingModel` is for ONNX.

The loaders are :func:`rankedlist.export.exported_program.load_exported_program` and
:func:`rankedlist.export.torchscript_model.load_torchscript_model`; both read the contract and
the fingerprint the same way (the contract with
:func:`~rankedlist.export.input_contract.embedded_contract`, :func:`weights_fingerprint`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TorchEmbeddingModel", "weights_fingerprint"]


class TorchEmbeddingModel:
    """A callable exported module with the ``embed`` interface of an ``EmbeddingModel``.

    Attributes:
        path: the exported file.
        format: ``"exported-program"`` or ``"torchscript"``.
        contract: its input contract (see :mod:`rankedlist.export.input_contract`).
        input_style, input_size: the contract's ``build_transform`` style and image size.
        embedding_dim: D, the size of one embedding (from the contract).
        fingerprint: the exported weights' fingerprint (see :mod:`rankedlist.models.fingerprint`).
        device: where the module runs (CPU until :meth:`to` moves it).
    """

    training = False

    def __init__(
        self,
        path: Path,
        fmt: str,
        module: Callable,
        contract: dict[str, Any],
        fingerprint: str,
        move: Callable[[torch.device], Callable] | None = None,
    ) -> None:
        self.path = path
        self.format = fmt
        self.module = module
        self.contract = contract
        self.fingerprint = fingerprint
        self.input_style: str = contract["transform_style"]
        self.input_size: int = int(contract["image_size"])
        dim = (contract.get("output") or {}).get("shape", [None, None])[1]
        self.embedding_dim: int | None = dim if isinstance(dim, int) else None
        self.device = torch.device("cpu")
        self._move = move  # returns the module on another device

    def __repr__(self) -> str:
        return (
            f"TorchEmbeddingModel({self.path}, {self.format}, input {self.input_style} "
            f"{self.input_size} px)"
        )

    # The nn.Module calls embed_images makes; the graph is already in eval mode.
    def to(self, device: Any = None, *args: Any, **kwargs: Any) -> TorchEmbeddingModel:
        if device is None or isinstance(device, torch.dtype):
            return self
        device = torch.device(device)
        if device != self.device and self._move is not None:
            self.module = self._move(device)
            self.device = device
        return self

    def eval(self) -> TorchEmbeddingModel:
        return self

    def train(self, mode: bool = True) -> TorchEmbeddingModel:
        return self

    def embed(self, images: Any) -> Any:
        """``(B, 3, H, W)`` float images (a torch tensor or numpy array) -> ``(B, D)``
        embeddings: a tensor on :attr:`device` for a tensor, a numpy array for an array."""
        as_torch = isinstance(images, torch.Tensor)
        x = images if as_torch else torch.from_numpy(np.ascontiguousarray(images, np.float32))
        with torch.no_grad():
            out = self.module(x.to(self.device, torch.float32))
        return out if as_torch else out.cpu().numpy()

    __call__ = embed


def weights_fingerprint(recorded: str | bytes, state: Mapping[str, Any]) -> str:
    """The fingerprint ``rankedlist export`` recorded, else the one of the file's weights
    (``state``, the ``model.`` prefix of the exported wrapper taken off): an export made
    before fingerprints still matches its checkpoint."""
    from rankedlist.models.fingerprint import FINGERPRINT_LENGTH, model_fingerprint

    if isinstance(recorded, bytes):
        recorded = recorded.decode("ascii", errors="replace")
    if re.fullmatch(f"[0-9a-f]{{{FINGERPRINT_LENGTH}}}", recorded or ""):
        return recorded
    return model_fingerprint({name.removeprefix("model."): value for name, value in state.items()})
