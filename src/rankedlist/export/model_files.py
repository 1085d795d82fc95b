"""One entry point for an exported model file of any format: :func:`open_model_file`.

``.onnx`` runs with onnxruntime (:mod:`rankedlist.export.onnx_model`), ``.pt2`` with
``torch.export.load`` (:mod:`rankedlist.export.exported_program`), ``.ts`` (or a ``.pt`` that
is a TorchScript archive, not a checkpoint) with ``torch.jit.load``
(:mod:`rankedlist.export.torchscript_model`). Each result has the same ``embed`` interface and
the attributes ``contract``, ``fingerprint``, ``input_style``, ``input_size`` and ``path``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["EXPORTED_MODEL_SUFFIXES", "is_exported_model_file", "open_model_file"]

#: The suffixes that name an exported model (not a checkpoint).
EXPORTED_MODEL_SUFFIXES = (".onnx", ".pt2", ".ts")


def is_exported_model_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an exported model rather than a checkpoint or run folder: by its
    suffix, or a ``.pt`` / ``.pth`` file that is a TorchScript archive."""
    from rankedlist.export.torchscript_model import is_torchscript_archive

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in EXPORTED_MODEL_SUFFIXES:
        return True
    return suffix in (".pt", ".pth") and path.is_file() and is_torchscript_archive(path)


def open_model_file(path: str | os.PathLike) -> Any:
    """Open an exported embedding model of any format, checked (see the loaders).

    Raises:
        FileNotFoundError, IsADirectoryError: no such file, or a folder.
        ValueError: a checkpoint given as a model file, or a file the loader refuses (one
            line naming the file and the fix).
    """
    from rankedlist.export.exported_program import load_exported_program
    from rankedlist.export.onnx_model import load_onnx_model
    from rankedlist.export.torchscript_model import is_torchscript_archive, load_torchscript_model

    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise IsADirectoryError(
            f"--model {path} is a folder; pass an exported .onnx, .pt2 or .ts file, or the run "
            "folder with --checkpoint"
        )
    if suffix == ".pt2":
        return load_exported_program(path)
    if suffix == ".ts" or (path.is_file() and is_torchscript_archive(path)):
        return load_torchscript_model(path)
    if suffix in (".pt", ".pth"):
        raise ValueError(
            f"--model takes an exported .onnx, .pt2 or .ts file; {path} looks like a "
            "checkpoint: pass a run folder or its .pt file with --checkpoint"
        )
    if suffix != ".onnx" and path.is_file() and zipfile.is_zipfile(path):
        return load_exported_program(path)  # a .pt2 by another name (ONNX is no zip)
    return load_onnx_model(path)
