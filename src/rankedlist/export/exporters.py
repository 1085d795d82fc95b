"""A trained embedding model -> an ONNX or TorchScript file, with its input contract inside.

What is exported is ``model.embed``: the backbone, every head, the fusion (concatenation in
``head_names`` order) and the L2 normalisation, the embedding the run's test numbers were
measured on. The batch dimension is dynamic; height and width are the contract's input size.

ONNX: opset :data:`ONNX_OPSET` (18), through PyTorch's ``torch.export``-based exporter (the
supported one; it emits opset 18 or newer), falling back to the TorchScript-based exporter when
a model cannot be captured by ``torch.export``. Opset 18 is the oldest the supported exporter
writes, so the file runs on the widest range of runtimes (onnxruntime >= 1.14, TensorRT,
OpenVINO); nothing these models use needs a newer one. The contract is stored in
``metadata_props`` under :data:`~rankedlist.export.input_contract.METADATA_KEY`, and the
fingerprint of the exported weights under
:data:`~rankedlist.models.fingerprint.ONNX_METADATA_KEY` (the checkpoint's own fingerprint, so an
index built with either refuses a query embedded by another model).

TorchScript: ``torch.jit.trace`` of ``embed`` (a trace records these models exactly: their
control flow depends only on the fixed input size), the contract as the extra file
:data:`TORCHSCRIPT_CONTRACT_FILE`.

Both also get the contract as a JSON sidecar, ``FILE.json``.
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
    "FORMATS",
    "ONNX_OPSET",
    "TORCHSCRIPT_CONTRACT_FILE",
    "EmbedOnly",
    "export_onnx",
    "export_torchscript",
    "random_inputs",
    "run_exported",
]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18
TORCHSCRIPT_CONTRACT_FILE = "rankedlist_input_contract.json"
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
    from rankedlist.models.fingerprint import ONNX_METADATA_KEY, model_fingerprint

    onnx = require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export")
    # The weights' fingerprint, taken before export touches the model: an index built with the
    # ONNX file then knows it for the checkpoint's model (rankedlist.models.fingerprint).
    fingerprint = model_fingerprint(model)
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
    contract = {**contract, "export": {**contract.get("export", {}), "exporter": exporter}}
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


def export_torchscript(model: nn.Module, path: str | Path, contract: dict[str, Any]) -> str:
    """Write a ``torch.jit.trace`` of ``model.embed`` to ``path``, the contract as an extra
    file. Returns ``"torch.jit.trace"``."""
    example = _example(contract)
    with _quiet_eval(model):
        try:
            traced = torch.jit.trace(EmbedOnly(model), (example,), check_trace=False)
        except Exception as err:  # noqa: BLE001 - tracing failures have many types
            raise ValueError(
                f"the model cannot be traced to TorchScript ({_first_line(err)}); try --format onnx"
            ) from err
        contract = {
            **contract,
            "export": {**contract.get("export", {}), "exporter": "torch.jit.trace"},
        }
        extra = {TORCHSCRIPT_CONTRACT_FILE: json.dumps(contract)}
        torch.jit.save(traced, str(path), _extra_files=extra)
    return "torch.jit.trace"


def run_exported(path: str | Path, fmt: str, inputs: np.ndarray) -> np.ndarray:
    """Embeddings of ``inputs`` (N, 3, H, W) by the exported file: onnxruntime on the CPU for
    ONNX, ``torch.jit.load`` for TorchScript."""
    if fmt == "onnx":
        from rankedlist.extras import require

        ort = require("onnxruntime", "export", "ONNX parity checks")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: inputs})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
        return loaded(torch.from_numpy(inputs)).numpy()
