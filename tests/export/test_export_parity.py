"""Exported models against PyTorch: onnxruntime (CPU), torch.export.load (``.pt2``) and
torch.jit.load, for GlyphNet and
BN-Inception with the multi-level heads and a timm ResNet, on random inputs and on real glyph
images, at two batch sizes (the batch dimension is dynamic): per row cosine >= 0.9999 and
largest absolute difference <= 1e-4 against the model's own ``embed`` (the fused,
L2-normalised test-time embedding)."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _export_helpers import MAX_ABS_DIFF, MIN_COSINE, MODELS, compare, glyph_images, write_run

from rankedlist.data import build_transform
from rankedlist.export import ONNX_OPSET, export_checkpoint
from rankedlist.export.exporters import CONTRACT_EXTRA_FILE
from rankedlist.export.input_contract import METADATA_KEY


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    """One model family: its run, its PyTorch model and its three exports."""
    name = request.param
    root = tmp_path_factory.mktemp(f"export_{name}")
    ckpt, model = write_run(root / "run", name)
    # check=False: this test measures parity itself (the export's own check: test_export_cli).
    onnx_result = export_checkpoint(root / "run", root / "model.onnx", check=False)
    ts_result = export_checkpoint(ckpt, root / "model.pt", check=False)
    pt2_result = export_checkpoint(ckpt, root / "model.pt2", check=False)
    size = MODELS[name][1]
    transform = build_transform(model.input_style, False, size)
    images = torch.stack([transform(im) for im in glyph_images(root, 32)])
    return name, model, {"onnx": onnx_result, "torchscript": ts_result,
                         "exported-program": pt2_result}, images  # fmt: skip


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@functools.cache
def exported_module(path: str):
    return torch.export.load(path).module()  # torch.export.load itself, the reference reader


def run_exported_program(path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return exported_module(str(path))(torch.from_numpy(x)).numpy()


def run_torchscript(path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.jit.load(str(path)).eval()(torch.from_numpy(x)).numpy()


def random_images(n: int, size: int, contract: dict, seed: int) -> np.ndarray:
    """Random 8-bit pixels normalised as the contract says."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3, size, size)).astype(np.float32)
    mean = np.asarray(contract["mean"], np.float32)[:, None, None]
    std = np.asarray(contract["std"], np.float32)[:, None, None]
    return (pixels * np.float32(contract["scale"]) - mean) / std


RUNNERS = {
    "onnx": run_onnx,
    "exported-program": run_exported_program,
    "torchscript": run_torchscript,
}


@pytest.mark.parametrize("fmt", list(RUNNERS))
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_parity_on_random_and_real_glyph_images(exported, fmt):
    name, model, results, glyphs = exported
    result, run = results[fmt], RUNNERS[fmt]
    size = MODELS[name][1]
    inputs = {  # three batch sizes: the batch dimension is dynamic
        "random": random_images(3, size, result.contract, seed=2),
        "glyphs": glyphs.numpy(),
        "one glyph": glyphs[:1].numpy(),
    }
    for what, x in inputs.items():
        with torch.no_grad():
            want = model.embed(torch.from_numpy(x)).numpy()
        got = run(result.path, np.ascontiguousarray(x))
        cos, diff = compare(got, want)
        assert cos >= MIN_COSINE and diff <= MAX_ABS_DIFF, (name, fmt, what, cos, diff)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_onnx_file_states_its_opset_batch_and_contract(exported):
    name, model, results, _ = exported
    result, ts_result = results["onnx"], results["torchscript"]
    proto = onnx.load(str(result.path))
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets[""] == ONNX_OPSET == 18
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "images" and out.name == "embeddings"
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, MODELS[name][1], MODELS[name][1]]
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = json.loads(meta[METADATA_KEY])
    assert contract == json.loads(result.sidecar.read_text())  # the file and its sidecar agree
    assert contract["transform_style"] == model.input_style
    assert contract["image_size"] == MODELS[name][1]
    assert contract["output"]["shape"] == ["batch", model.fused_dim]
    assert contract["export"]["opset"] == 18 and contract["model"]["iteration"] == 7
    extra = {CONTRACT_EXTRA_FILE: ""}
    torch.jit.load(str(ts_result.path), _extra_files=extra)
    ts_contract = json.loads(extra[CONTRACT_EXTRA_FILE])
    assert ts_contract == json.loads(ts_result.sidecar.read_text())
    assert {k: v for k, v in ts_contract.items() if k != "export"} == {
        k: v for k, v in contract.items() if k != "export"
    }
