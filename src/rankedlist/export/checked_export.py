"""A training run -> an exported embedding model file, checked against PyTorch before it lands.

:func:`export_checkpoint` rebuilds the run's model (``best.pt``, else ``last.pt``: the model
the run's test numbers came from), writes its input contract, exports ``model.embed`` to a
temporary file beside ``out``, compares the file's outputs with PyTorch's on random images
(batches of 4 and 1, so the dynamic batch dimension is exercised too) and only then renames it
to ``out`` and writes the ``out.json`` sidecar. A file that fails the check never replaces
``out``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankedlist.export.exporters import (
    FORMATS,
    ONNX_OPSET,
    export_exported_program,
    export_onnx,
    export_torchscript,
    random_inputs,
    run_exported,
)
from rankedlist.export.input_contract import input_contract, sidecar_path

__all__ = [
    "PARITY_MAX_ABS_DIFF",
    "PARITY_MIN_COSINE",
    "ExportResult",
    "export_checkpoint",
    "format_from_path",
    "parity",
]

#: The exported file must match PyTorch's ``model.embed`` to these, row by row.
PARITY_MIN_COSINE = 0.9999
PARITY_MAX_ABS_DIFF = 1e-4
_SUFFIXES = {
    ".onnx": "onnx",
    ".pt2": "exported-program",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".pth": "torchscript",
}
_EXPORTERS = {"exported-program": export_exported_program, "torchscript": export_torchscript}
#: What loads each format back for the parity check (as a user's program would).
_RUNTIMES = {
    "onnx": "onnxruntime (CPU)",
    "exported-program": "torch.export.load (CPU)",
    "torchscript": "torch.jit.load (CPU)",
}


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and how well it matches PyTorch."""

    path: Path
    sidecar: Path
    format: str
    exporter: str
    contract: dict[str, Any]
    parity: dict[str, Any] = field(default_factory=dict)


def format_from_path(path: str | os.PathLike) -> str:
    """``onnx`` for ``.onnx``, ``exported-program`` for ``.pt2``, ``torchscript`` for ``.pt`` /
    ``.ts`` / ``.pth``."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"cannot tell the export format from {path}: pass --format onnx, exported-program "
            "or torchscript (or name the file .onnx, .pt2 or .ts)"
        )
    return _SUFFIXES[suffix]


def parity(model: torch.nn.Module, path: str | Path, fmt: str, inputs: np.ndarray) -> dict:
    """Per-row cosine similarity and largest absolute difference between the exported file's
    embeddings and ``model.embed``'s (eval mode, float32, CPU) on ``inputs``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model.embed(torch.from_numpy(inputs)).float().numpy()
    finally:
        model.train(was_training)
    got = np.asarray(run_exported(path, fmt, inputs), dtype=np.float32)
    if got.shape != want.shape:
        raise ValueError(
            f"the exported model returns shape {got.shape} for {inputs.shape[0]} images, PyTorch "
            f"{want.shape}: the export is broken"
        )
    with np.errstate(all="ignore"):  # NaN / inf rows give NaN here, and are counted apart
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        diff = np.abs(got - want).max()
    return {
        "images": int(inputs.shape[0]),
        "min_cosine": float(cos.min()),  # NaN when any row is NaN (np.min propagates it)
        "max_abs_diff": float(diff),
        "nonfinite_reference": int((~np.isfinite(want)).any(1).sum()),
        "nonfinite_exported": int((~np.isfinite(got)).any(1).sum()),
    }


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise IsADirectoryError(
            f"--out {out} is a folder; pass the file to write, e.g. {out / 'model.onnx'}"
        )
    base = out.absolute().parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(f"cannot write --out {out}: {base} is a file, not a folder")


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str | None = None,
    opset: int = ONNX_OPSET,
    check: bool = True,
) -> ExportResult:
    """Export a run's embedding model (``model.embed``) to ``out`` with its input contract.

    Args:
        checkpoint: a ``.pt`` file or a run folder.
        out: the file to write (replaced); its contract also goes to ``out.json``.
        fmt: ``"onnx"``, ``"exported-program"`` (``torch.export``, ``.pt2``) or
            ``"torchscript"``; ``None`` reads it from ``out``'s suffix.
        opset: the ONNX opset (default :data:`ONNX_OPSET`).
        check: compare the file with PyTorch before writing it (:data:`PARITY_MIN_COSINE`,
            :data:`PARITY_MAX_ABS_DIFF`); a failure raises ValueError and leaves ``out`` as it
            was.
    """
    from rankedlist import __version__
    from rankedlist.atomic_write import atomic_write_text, current_umask, fsync_dir
    from rankedlist.models.fingerprint import model_fingerprint
    from rankedlist.training.checkpoint_model import load_model_from_checkpoint

    out = Path(out)
    _check_out(out)
    fmt = format_from_path(out) if fmt is None else fmt
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown export format {fmt!r}: choose onnx, exported-program or torchscript"
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 7:
        raise ValueError(f"--opset must be an ONNX opset number such as 18, got {opset!r}")
    loaded = load_model_from_checkpoint(checkpoint, device="cpu")
    model = loaded.model
    style = getattr(model, "input_style", None)
    dim = int(getattr(model, "fused_dim", 0)) or None
    contract = input_contract(
        style,
        loaded.image_size,
        dim or 0,
        mean=loaded.input_mean,  # what the checkpoint's weights learnt with
        std=loaded.input_std,
    )
    if dim is None:  # a model without fused_dim: ask it
        with torch.no_grad():
            dim = int(model.eval().embed(torch.from_numpy(random_inputs(contract, 2))).shape[1])
        contract["output"]["shape"][1] = dim
    contract["model"] = {
        "checkpoint": str(loaded.checkpoint.resolve()),
        "iteration": loaded.iteration,
        "spec": dict(getattr(model, "spec", {})),
        "heads": list(getattr(model, "head_names", ())),
        # The weights' fingerprint: an index built with the file refuses another model's.
        "fingerprint": model_fingerprint(model),
    }
    contract["export"] = {
        "format": fmt,
        "opset": opset if fmt == "onnx" else None,
        "torch_version": torch.__version__,
        "rankedlist_version": __version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "onnx":
            exporter = export_onnx(model, tmp, contract, opset)
        else:
            exporter = _EXPORTERS[fmt](model, tmp, contract)
        contract["export"]["exporter"] = exporter
        checked: dict[str, Any] = {}
        if check:
            checked = _check_parity(model, tmp, fmt, contract, out)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(out.parent)
    sidecar = atomic_write_text(sidecar_path(out), json.dumps(contract, indent=2) + "\n")
    return ExportResult(out, sidecar, fmt, exporter, contract, checked)


def _check_parity(
    model: torch.nn.Module, path: Path, fmt: str, contract: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Parity on 4 random images in one batch, then on one alone (the dynamic batch).

    Non-finite embeddings (NaN, inf) fail it, from PyTorch or from the exported file: every
    comparison with NaN is false, so they would pass a plain threshold test.
    """
    inputs = random_inputs(contract, 4, seed=1)
    batched = parity(model, path, fmt, inputs)
    single = parity(model, path, fmt, inputs[:1])
    result = {
        "images": batched["images"],
        "min_cosine": min(batched["min_cosine"], single["min_cosine"]),
        "max_abs_diff": max(batched["max_abs_diff"], single["max_abs_diff"]),
        "runtime": _RUNTIMES[fmt],
    }
    images = f"{batched['images']} random test images"
    if batched["nonfinite_reference"] or single["nonfinite_reference"]:
        count = max(batched["nonfinite_reference"], single["nonfinite_reference"])
        raise ValueError(
            f"the model gives non-finite embeddings (NaN or inf) in PyTorch itself, for {count} "
            f"of {images}; {out} was not written. The checkpoint's weights or statistics are "
            "broken: export an earlier checkpoint of the run, or train again (e.g. a lower "
            "optim.lr)"
        )
    if batched["nonfinite_exported"] or single["nonfinite_exported"]:
        count = max(batched["nonfinite_exported"], single["nonfinite_exported"])
        raise ValueError(
            f"the exported {fmt} model gives non-finite embeddings (NaN or inf) for {count} of "
            f"{images} where PyTorch's are finite; {out} was not written. Try the other "
            "--format, or rerun with --debug and report it"
        )
    # Written so that a NaN fails too (every comparison with NaN is false).
    if not (
        result["min_cosine"] >= PARITY_MIN_COSINE and result["max_abs_diff"] <= PARITY_MAX_ABS_DIFF
    ):
        raise ValueError(
            f"the exported {fmt} model does not reproduce PyTorch's embeddings (min cosine "
            f"{result['min_cosine']:.6f} < {PARITY_MIN_COSINE} or max |difference| "
            f"{result['max_abs_diff']:.2e} > {PARITY_MAX_ABS_DIFF}); {out} was not written. "
            "Try the other --format, or rerun with --debug and report it"
        )
    return result
