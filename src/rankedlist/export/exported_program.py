"""A ``.pt2`` file written by ``rankedlist export --format exported-program`` (``torch.export``)
opened with ``torch.export.load``, checked, behind the ``embed`` interface.

``torch.export.load`` is not a safe reader by itself: it unpickles tensors with
``torch.load(weights_only=False)``, unpickles "opaque" constants with plain ``pickle`` and can
load compiled AOTInductor libraries, any of which runs code from the file. So
:func:`load_exported_program` first reads the archive's table of contents and refuses anything
but a graph (JSON), tensors and extra files, then loads with every ``torch.load`` forced to
``weights_only=True`` (PyTorch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``). What runs is the program's
graph of PyTorch operators, as with an ONNX file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from rankedlist.export.input_contract import embedded_contract
from rankedlist.export.torch_embedding_model import (
    TorchEmbeddingModel,
    weights_fingerprint,
)

__all__ = ["load_exported_program"]

_EXPORT_HINT = (
    "export a trained run with `rankedlist export --checkpoint RUN --format exported-program`"
)
# What an exported program of tensors holds, under the archive's root folder; anything else
# (compiled AOTInductor code, pickled Python objects, other back ends' payloads) is refused.
_ALLOWED_FILES = (".data/", "archive_format", "archive_version", "byteorder", "models/", "extra/")
_ALLOWED_DATA = ("data/weights/", "data/sample_inputs/")


def load_exported_program(path: str | os.PathLike) -> TorchEmbeddingModel:
    """Open an exported program (``.pt2``) as an embedding model and check it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ``torch.export`` archive, one holding more than a graph and tensors,
            damaged or written by an incompatible PyTorch, not an embedding model (one float
            image input ``(N, 3, H, W)``, one ``(N, D)`` output), or without an input contract
            or with one that disagrees with the program; the message names the file and the fix.
    """
    import torch

    from rankedlist.export.exporters import CONTRACT_EXTRA_FILE, FINGERPRINT_EXTRA_FILE

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--model {path} is a folder; pass the .pt2 file")
    if not path.is_file():
        raise FileNotFoundError(f"exported program {path} not found; {_EXPORT_HINT}")
    _check_archive(path)
    extra = {CONTRACT_EXTRA_FILE: "", FINGERPRINT_EXTRA_FILE: ""}
    try:
        # An open file: torch.export.load takes only paths that end in .pt2 (the parity check
        # reads a temporary file).
        with _weights_only_loads(), open(path, "rb") as fh:
            program = torch.export.load(fh, extra_files=extra)
    except Exception as err:  # noqa: BLE001 - a damaged or foreign archive fails in many ways
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} cannot be loaded by torch.export.load ({reason[:200]}): it is damaged or "
            f"was written by an incompatible PyTorch {torch.__version__}; {_EXPORT_HINT}"
        ) from err
    contract = embedded_contract(
        path,
        extra[CONTRACT_EXTRA_FILE],
        inside=f"the extra file {CONTRACT_EXTRA_FILE}",
        hint=_EXPORT_HINT,
    )
    _check_signature(path, program, int(contract["image_size"]))
    fingerprint = weights_fingerprint(extra[FINGERPRINT_EXTRA_FILE], program.state_dict)
    loaded = {"program": program}

    def move(device: Any) -> Any:
        from torch.export.passes import move_to_device_pass

        loaded["program"] = move_to_device_pass(loaded["program"], device)
        return loaded["program"].module()

    return TorchEmbeddingModel(
        path, "exported-program", program.module(), contract, fingerprint, move
    )


def _check_archive(path: Path) -> None:
    """Refuse a file that is not a ``torch.export`` archive of a graph and tensors."""
    not_pt2 = f"{path} is not an exported program written by torch.export.save"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{not_pt2} (not a zip archive); {_EXPORT_HINT}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            root = roots.pop() if len(roots) == 1 else None
            marker = f"{root}/archive_format"
            fmt = archive.read(marker).decode(errors="replace") if marker in names else ""
    except (zipfile.BadZipFile, OSError, KeyError) as err:
        raise ValueError(f"{not_pt2} ({err}); {_EXPORT_HINT}") from err
    if root is None or fmt.strip() != "pt2" or f"{root}/models/model.json" not in names:
        raise ValueError(f"{not_pt2} (no pt2 archive format or no model); {_EXPORT_HINT}")
    for name in names:
        inner = name[len(root) + 1 :]
        if not inner or inner.endswith("/") or _allowed(inner):
            continue
        raise ValueError(
            f"{path} holds {inner}, which is not part of an exported program of tensors "
            "(compiled code or pickled Python objects run code when loaded), so rankedlist "
            f"does not open it; {_EXPORT_HINT}"
        )


def _allowed(inner: str) -> bool:
    if inner.startswith(_ALLOWED_FILES) or inner.startswith(_ALLOWED_DATA):
        return True
    if inner.startswith("data/constants/"):  # tensors and their table, not Python objects
        name = inner.removeprefix("data/constants/")
        return name.startswith("tensor_") or name.endswith("_constants_config.json")
    return False


@contextlib.contextmanager
def _weights_only_loads():
    """Every ``torch.load`` inside forced to ``weights_only=True``; torch.export's own
    traceback-laden warning on a damaged archive silenced (the caller reports it in a line)."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)}
    saved["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    logger = logging.getLogger("torch.export")  # and its children, which inherit the level
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_signature(path: Path, program: Any, size: int) -> None:
    """One float32 ``(N, 3, size, size)`` input, one ``(N, D)`` output."""
    signature = program.graph_signature
    by_name = {node.name: node for node in program.graph.nodes}
    inputs = [by_name[name].meta.get("val") for name in signature.user_inputs]
    outputs = [by_name[name].meta.get("val") for name in signature.user_outputs if name in by_name]
    image_like = (
        len(inputs) == 1
        and getattr(inputs[0], "dtype", None) is not None
        and inputs[0].dtype.is_floating_point
        and inputs[0].dim() == 4
        and inputs[0].shape[1] == 3
    )
    if not image_like or len(outputs) != 1 or getattr(outputs[0], "ndim", 0) != 2:
        took = ", ".join(_describe(v) for v in inputs) or "nothing"
        gave = ", ".join(_describe(v) for v in outputs) or "nothing"
        raise ValueError(
            f"{path} is not an embedding model: it takes {took} and returns {gave}, but an "
            "embedding model takes one float tensor [N, 3, H, W] of images and returns one "
            f"[N, D] of embeddings; {_EXPORT_HINT}"
        )
    height, width = (int(s) if _is_int(s) else None for s in inputs[0].shape[2:])
    if (height, width) != (size, size):
        raise ValueError(
            f"{path} takes {height} x {width} images but its input contract says {size} x "
            f"{size}: the contract belongs to another model; {_EXPORT_HINT}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int)  # a dynamic dimension is a torch.SymInt


def _describe(value: Any) -> str:
    if not hasattr(value, "shape"):
        return type(value).__name__
    dims = ", ".join(str(int(s)) if _is_int(s) else "?" for s in value.shape)
    return f"{str(value.dtype).removeprefix('torch.')} [{dims}]"
