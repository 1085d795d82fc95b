"""A TorchScript file written by ``rankedlist export --format torchscript`` opened with
``torch.jit.load``, behind the ``embed`` interface.

TorchScript is deprecated by PyTorch in favour of ``torch.export`` (``.pt2``); it is read while
PyTorch ships it. A TorchScript archive holds TorchScript code, which ``torch.jit.load``
compiles and runs (not arbitrary Python): open files you exported or trust.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

from rankedlist.export.input_contract import embedded_contract
from rankedlist.export.torch_embedding_model import (
    TorchEmbeddingModel,
    weights_fingerprint,
)

__all__ = ["is_torchscript_archive", "load_torchscript_model"]

_EXPORT_HINT = (
    "export a trained run with `rankedlist export --checkpoint RUN --format exported-program` "
    "(or --format torchscript)"
)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (it has a ``code/`` folder), not a checkpoint
    written by ``torch.save`` (both are zip files, often both named ``.pt``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_torchscript_model(path: str | os.PathLike) -> TorchEmbeddingModel:
    """Open an exported TorchScript embedding model on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a TorchScript file, or one without an input contract (inside or in
            ``FILE.json``); the message names the file and the fix.
    """
    import torch

    from rankedlist.export.exporters import CONTRACT_EXTRA_FILE, FINGERPRINT_EXTRA_FILE

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--model {path} is a folder; pass the TorchScript file")
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript model {path} not found; {_EXPORT_HINT}")
    if not is_torchscript_archive(path):
        raise ValueError(f"{path} is not a TorchScript file; {_EXPORT_HINT}")
    extra = {CONTRACT_EXTRA_FILE: "", FINGERPRINT_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:  # noqa: BLE001 - a damaged archive fails in many ways
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} cannot be loaded by torch.jit.load ({reason[:200]}); {_EXPORT_HINT}"
        ) from err
    module.eval()
    contract = embedded_contract(
        path,
        extra[CONTRACT_EXTRA_FILE],
        inside=f"the extra file {CONTRACT_EXTRA_FILE}",
        hint=_EXPORT_HINT,
    )
    fingerprint = weights_fingerprint(extra[FINGERPRINT_EXTRA_FILE], module.state_dict())

    def move(device: Any) -> Any:
        return module.to(device)

    return TorchEmbeddingModel(path, "torchscript", module, contract, fingerprint, move)
