"""A trained embedding model -> an ONNX, TorchScript or ``torch.export`` file, its input
contract and its model fingerprint inside.

What is exported is ``model.embed``: the backbone, every head, the fusion (concatenation in
``head_names`` order) and the L2 normalisation, the embedding the run's test numbers were
measured on. The batch dimension is dynamic; height and width are the contract's input size.

ONNX: opset :data:`ONNX_OPSET` (18), through ``torch.onnx.export(..., dynamo=True)``, the
``torch.export``-based exporter PyTorch recommends (``dynamo=True`` is the default), falling
back to the TorchScript-based exporter when a model cannot be captured by ``torch.export``.
Opset 18 is the oldest the recommended exporter writes, so the file runs on the widest range of
runtimes (onnxruntime >= 1.14, TensorRT, OpenVINO); nothing these models use needs a newer one.
The contract is stored in ``metadata_props`` under
:data:`~rankedlist.export.input_contract.METADATA_KEY`, and the fingerprint of the exported
weights under :data:`~rankedlist.models.fingerprint.ONNX_METADATA_KEY` (the checkpoint's own
fingerprint, so an index built with either refuses a query embedded by another model).

Exported program (``.pt2``): ``torch.export.export`` of ``embed`` with a dynamic batch
dimension (``torch.export.Dim``), written by ``torch.export.save`` and read back by
``torch.export.load`` (:mod:`rankedlist.export.exported_program`): the format PyTorch
recommends in place of TorchScript, which it has deprecated.

TorchScript: ``torch.jit.trace`` of ``embed`` (a trace records these models exactly: their
control flow depends only on the fixed input size), kept while PyTorch ships it.

The ``.pt2`` and TorchScript files carry the contract and the fingerprint as the extra files
:data:`CONTRACT_EXTRA_FILE` and :data:`FINGERPRINT_EXTRA_FILE`. Every format also gets the
contract, the fingerprint in its ``model`` section, as a JSON sidecar, ``FILE.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rankedlist.export.input_contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAME

__all__ = [
    "CONTRACT_EXTRA_FILE",
    "FINGERPRINT_EXTRA_FILE",
    "FORMATS",
    "ONNX_EXPORTER",
    "ONNX_OPSET",
    "EmbedOnly",
    "export_exported_program",
    "export_onnx",
    "export_torchscript",
    "random_inputs",
    "run_exported",
]

FORMATS = ("onnx", "exported-program", "torchscript")
ONNX_OPSET = 18
#: What ``export --help`` names: the ONNX exporter used, the one PyTorch recommends.
ONNX_EXPORTER = "torch.onnx.export(dynamo=True), the torch.export-based exporter"
#: The extra files of a ``.pt2`` or TorchScript export: the input contract (JSON) and the
#: fingerprint of the exported weights (16 hex digits, rankedlist.models.fingerprint).
CONTRACT_EXTRA_FILE = "rankedlist_input_contract.json"
FINGERPRINT_EXTRA_FILE = "rankedlist_model_fingerprint"
SUMMARY_KEY = "rankedlist.summary"  # one line for model viewers (Netron shows metadata_props)


class EmbedOnly(nn.Module):
    """``forward(images) = model.embed(images)``: the module that is exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


@contextlib.contextmanager
def _quiet_eval(model: nn.Module):
    """The model in eval mode on the CPU, without gradients, exporters' chatter captured; its
    train/eval mode is restored afterwards. Yields the captured text."""
    was_training = model.training
    log = io.StringIO()
    model.eval()
    try:
        with (
            torch.no_grad(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            warnings.simplefilter("ignore")
            yield log
    finally:
        model.train(was_training)


def _example(contract: dict[str, Any]) -> torch.Tensor:
    """Two images (a batch of one would let an exporter fix the batch size)."""
    return torch.from_numpy(random_inputs(contract, 2, seed=0))


def random_inputs(contract: dict[str, Any], n: int, seed: int = 0) -> np.ndarray:
    """``n`` random images (uniform 8-bit pixels) prepared as ``contract`` says: inputs in the
    range the model sees."""
    size = int(contract["image_size"])
    pixels = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.float32)
    mean = np.asarray(contract["mean"], dtype=np.float32)
    std = np.asarray(contract["std"], dtype=np.float32)
    x = (pixels * np.float32(contract["scale"]) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def export_onnx(
    model: nn.Module, path: str | Path, contract: dict[str, Any], opset: int = ONNX_OPSET
) -> str:
    """Write ``model.embed`` to ``path`` as ONNX with ``contract`` in its ``metadata_props``.

    Returns the exporter used: ``"torch.export"`` or, when that cannot capture the model,
    ``"torchscript"`` (PyTorch's TorchScript-based ONNX exporter).

    Raises:
        ValueError: neither exporter can export the model (the message has both reasons).
    """
    from rankedlist.extras import require
    from rankedlist.models.fingerprint import ONNX_METADATA_KEY

    onnx = require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export")
    # The weights' fingerprint, taken before export touches the model: an index built with the
    # ONNX file then knows it for the checkpoint's model (rankedlist.models.fingerprint).
    fingerprint = _fingerprint(model, contract)
    wrapper = EmbedOnly(model)
    example = _example(contract)
    proto = None
    exporter = "torch.export"
    with _quiet_eval(model):
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                optimize=True,
            )
            proto = program.model_proto
        except Exception as first:  # noqa: BLE001 - any capture failure: try the other exporter
            exporter = "torchscript"
            buffer = io.BytesIO()
            try:
                torch.onnx.export(
                    wrapper,
                    (example,),
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
            except Exception as second:  # noqa: BLE001
                raise ValueError(
                    f"the model cannot be exported to ONNX (torch.export: {_first_line(first)}; "
                    f"TorchScript exporter: {_first_line(second)}); try --format torchscript"
                ) from second
            proto = onnx.load_from_string(buffer.getvalue())
    contract = _with_exporter(contract, exporter)
    ours = {
        METADATA_KEY: json.dumps(contract),
        SUMMARY_KEY: _summary(contract),
        ONNX_METADATA_KEY: fingerprint,
    }
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in ours]
    del proto.metadata_props[:]
    for key, value in [*kept, *ours.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return exporter


def _summary(contract: dict[str, Any]) -> str:
    out = contract["output"]["shape"][1]
    return (
        f"rankedlist embedding model: images float32 NCHW [batch, 3, {contract['image_size']}, "
        f"{contract['image_size']}] ({contract['summary']}) -> L2-normalised embeddings "
        f"[batch, {out}]"
    )


def _fingerprint(model: nn.Module, contract: dict[str, Any]) -> str:
    """The weights' fingerprint the contract records (``export_checkpoint`` takes it before
    anything touches the model), else the model's own."""
    from rankedlist.models.fingerprint import model_fingerprint

    recorded = (contract.get("model") or {}).get("fingerprint")
    return recorded if isinstance(recorded, str) and recorded else model_fingerprint(model)


def _with_exporter(contract: dict[str, Any], exporter: str) -> dict[str, Any]:
    return {**contract, "export": {**contract.get("export", {}), "exporter": exporter}}


def export_torchscript(model: nn.Module, path: str | Path, contract: dict[str, Any]) -> str:
    """Write a ``torch.jit.trace`` of ``model.embed`` to ``path``, the contract and the
    fingerprint as extra files. Returns ``"torch.jit.trace"``."""
    fingerprint = _fingerprint(model, contract)
    example = _example(contract)
    with _quiet_eval(model):
        try:
            traced = torch.jit.trace(EmbedOnly(model), (example,), check_trace=False)
        except Exception as err:  # noqa: BLE001 - tracing failures have many types
            raise ValueError(
                f"the model cannot be traced to TorchScript ({_first_line(err)}); try --format "
                "exported-program or --format onnx"
            ) from err
        extra = {
            CONTRACT_EXTRA_FILE: json.dumps(_with_exporter(contract, "torch.jit.trace")),
            FINGERPRINT_EXTRA_FILE: fingerprint,
        }
        torch.jit.save(traced, str(path), _extra_files=extra)
    return "torch.jit.trace"


def export_exported_program(model: nn.Module, path: str | Path, contract: dict[str, Any]) -> str:
    """Write ``torch.export.export`` of ``model.embed``, its batch dimension dynamic, to
    ``path`` with ``torch.export.save``, the contract and the fingerprint as extra files.
    Returns ``"torch.export"``.

    Raises:
        ValueError: ``torch.export`` cannot capture the model (the message has the reason).
    """
    fingerprint = _fingerprint(model, contract)
    example = _example(contract)
    with _quiet_eval(model):
        try:
            program = torch.export.export(
                EmbedOnly(model),
                (example,),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            )
        except Exception as err:  # noqa: BLE001 - capture failures have many types
            raise ValueError(
                f"torch.export cannot capture the model ({_first_line(err)}); try --format onnx "
                "or --format torchscript"
            ) from err
        extra = {
            CONTRACT_EXTRA_FILE: json.dumps(_with_exporter(contract, "torch.export")),
            FINGERPRINT_EXTRA_FILE: fingerprint,
        }
        # Through an open file: the archive's root folder is then "archive", not the name of
        # the temporary file it is written to.
        with open(path, "wb") as fh:
            torch.export.save(program, fh, extra_files=extra)
    return "torch.export"


def run_exported(path: str | Path, fmt: str, inputs: np.ndarray) -> np.ndarray:
    """Embeddings of ``inputs`` (N, 3, H, W) by the exported file, loaded as a user's file is:
    onnxruntime on the CPU for ONNX, :func:`~rankedlist.export.exported_program.
    load_exported_program` for ``.pt2``, ``torch.jit.load`` for TorchScript."""
    if fmt == "onnx":
        from rankedlist.extras import require

        ort = require("onnxruntime", "export", "ONNX parity checks")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: inputs})[0]
    if fmt == "exported-program":
        from rankedlist.export.exported_program import load_exported_program

        return load_exported_program(path).embed(inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
        return loaded(torch.from_numpy(inputs)).numpy()
