"""An exported ONNX embedding model, run by onnxruntime, usable wherever rankedlist embeds images.

:func:`load_onnx_model` opens a file written by ``rankedlist export --format onnx`` (or any ONNX
model mapping ``(N, 3, H, W)`` float images to ``(N, D)`` embeddings, with a rankedlist input
contract in its ``metadata_props`` or in a ``FILE.json`` sidecar) and checks that it is such a
model. The :class:`OnnxEmbeddingModel` it returns has the interface of an ``EmbeddingModel`` that
:func:`rankedlist.retrieval.embed_images` uses (``embed``, ``eval``, ``to``, ``input_style``,
``input_size``), so ``rankedlist index build --model FILE.onnx`` embeds with onnxruntime exactly
where the checkpoint path embeds with PyTorch, through the same test-time transform.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from rankedlist.export.input_contract import METADATA_KEY, embedded_contract

__all__ = ["OnnxEmbeddingModel", "load_onnx_model"]

_EXPORT_HINT = "export a trained run with `rankedlist export --checkpoint RUN --format onnx`"


class OnnxEmbeddingModel:
    """An onnxruntime session with the ``embed`` interface of an ``EmbeddingModel``.

    Attributes:
        path: the ``.onnx`` file.
        contract: its input contract (see :mod:`rankedlist.export.input_contract`).
        input_style, input_size: the contract's ``build_transform`` style and image size.
        embedding_dim: D, the size of one embedding.
        fingerprint: the exported weights' fingerprint from the file's metadata (the one of the
            checkpoint it was exported from), else ``"file:"`` + the sha256 of the file (see
            :mod:`rankedlist.models.fingerprint`).
    """

    training = False

    def __init__(
        self, path: Path, session: Any, contract: dict[str, Any], fingerprint: str = ""
    ) -> None:
        self.path = path
        self.session = session
        self.contract = contract
        self.fingerprint = fingerprint
        self.input_style: str = contract["transform_style"]
        self.input_size: int = int(contract["image_size"])
        self.input_name: str = session.get_inputs()[0].name
        self.embedding_dim: int | None = _dim(session.get_outputs()[0].shape[1])

    def __repr__(self) -> str:
        return f"OnnxEmbeddingModel({self.path}, input {self.input_style} {self.input_size} px)"

    # The nn.Module calls embed_images makes; the session runs on the CPU.
    def to(self, *args: Any, **kwargs: Any) -> OnnxEmbeddingModel:
        return self

    def eval(self) -> OnnxEmbeddingModel:
        return self

    def train(self, mode: bool = True) -> OnnxEmbeddingModel:
        return self

    def embed(self, images: Any) -> Any:
        """``(B, 3, H, W)`` float images (a torch tensor or numpy array) -> ``(B, D)``
        embeddings, of the same kind."""
        as_torch = hasattr(images, "detach")
        x = images.detach().cpu().float().numpy() if as_torch else images
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
        if as_torch:
            import torch

            return torch.from_numpy(out)
        return out

    __call__ = embed


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _describe(arg: Any) -> str:
    shape = ", ".join(str(s) if s not in (None, "") else "?" for s in arg.shape)
    return f"{arg.type} [{shape}]"


def load_onnx_model(path: str | os.PathLike) -> OnnxEmbeddingModel:
    """Open an exported embedding model with onnxruntime (CPU) and check it.

    Raises:
        MissingExtraError: onnxruntime is not installed (``pip install 'rankedlist[export]'``).
        FileNotFoundError: no such file.
        ValueError: the file is not an ONNX model, not an embedding model (one float image
            input ``(N, 3, H, W)``, one float output ``(N, D)``), or has no input contract or
            one that disagrees with the model; the message names the file and the fix.
    """
    from rankedlist.extras import require

    ort = require("onnxruntime", "export", "ONNX models (--model FILE.onnx)")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--model {path} is a folder; pass the .onnx file")
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} not found; {_EXPORT_HINT}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's errors for a foreign file vary
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} is not an ONNX model onnxruntime can load ({reason}); {_EXPORT_HINT}"
        ) from err
    inputs, outputs = session.get_inputs(), session.get_outputs()
    image_like = (
        len(inputs) == 1
        and inputs[0].type == "tensor(float)"
        and len(inputs[0].shape) == 4
        and inputs[0].shape[1] == 3
    )
    if not image_like or len(outputs) != 1 or len(outputs[0].shape) != 2:
        took = ", ".join(_describe(a) for a in inputs) or "nothing"
        gave = ", ".join(_describe(a) for a in outputs) or "nothing"
        raise ValueError(
            f"{path} is not an embedding model: it takes {took} and returns {gave}, but an "
            "embedding model takes one float tensor [N, 3, H, W] of images and returns one "
            f"[N, D] of embeddings; {_EXPORT_HINT}"
        )
    metadata = session.get_modelmeta().custom_metadata_map
    contract = embedded_contract(
        path,
        metadata.get(METADATA_KEY, ""),
        inside=f"the metadata {METADATA_KEY!r}",
        hint=_EXPORT_HINT,
    )
    size = int(contract["image_size"])
    height, width = inputs[0].shape[2], inputs[0].shape[3]
    fixed = [s for s in (height, width) if isinstance(s, int)]
    if any(s != size for s in fixed):
        raise ValueError(
            f"{path} takes {height} x {width} images but its input contract says "
            f"{size} x {size}: the contract belongs to another model; {_EXPORT_HINT}"
        )
    return OnnxEmbeddingModel(path, session, contract, _fingerprint(path, metadata))


def _fingerprint(path: Path, metadata: dict[str, str]) -> str:
    """The weights' fingerprint that ``rankedlist export`` wrote, else the file's sha256."""
    from rankedlist.models.fingerprint import (
        FINGERPRINT_LENGTH,
        ONNX_METADATA_KEY,
        file_fingerprint,
    )

    written = metadata.get(ONNX_METADATA_KEY, "")
    if re.fullmatch(f"[0-9a-f]{{{FINGERPRINT_LENGTH}}}", written):
        return written
    return file_fingerprint(path)  # exported before fingerprints, or by another tool
