"""`rankedlist export --format exported-program` (``torch.export``, ``.pt2``) and the exported
files wherever a model file is taken (`index build|search --model`, ``open_index_model``).

References: the PyTorch model's own ``embed`` (float64 comparison), ``torch.export.load`` called
directly, the checkpoint's index built with PyTorch, and the fingerprint of the checkpoint's
weights. Every bad file ends in one ``error:`` line.
"""

from __future__ import annotations

import inspect
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from _export_helpers import MAX_ABS_DIFF, MIN_COSINE, compare, glyph_images, write_run
from test_export_cli import RUNTIME, error_line, parser, run

from rankedlist.export.exporters import CONTRACT_EXTRA_FILE, FINGERPRINT_EXTRA_FILE
from rankedlist.models.fingerprint import model_fingerprint
from rankedlist.retrieval import EmbeddingIndex
from rankedlist.retrieval.index_models import open_index_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A GlyphNet run, its .pt2 export through the command, and a folder of glyph images."""
    root = tmp_path_factory.mktemp("pt2")
    ckpt, model = write_run(root / "run", "glyphnet")
    for i, image in enumerate(glyph_images(root, 32)):
        folder = root / "images" / f"class_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"g{i:02d}.png")
    pt2 = root / "exports" / "glyphs.pt2"
    assert run(["export", "--checkpoint", str(root / "run"), "--out", str(pt2)]) == 0
    return root, ckpt, model, pt2


@pytest.fixture(scope="module")
def checkpoint_index(setup):
    """The index of the images built with the checkpoint (PyTorch): the reference."""
    root, ckpt, _, _ = setup
    out = root / "idx_ckpt"
    common = ["--images", str(root / "images"), "--labels-from-folders", *RUNTIME]
    assert run(["index", "build", "--checkpoint", str(ckpt), "--out", str(out), *common]) == 0
    return out


def test_export_writes_a_checked_pt2_with_a_dynamic_batch(setup, capsys):
    root, ckpt, model, pt2 = setup
    capsys.readouterr()
    again = root / "exports" / "again.bin"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(again)]
    assert run([*argv, "--format", "exported-program"]) == 0
    printed = capsys.readouterr().out
    assert f"to {again}: torch.export ExportedProgram via torch.export" in printed
    assert "parity with PyTorch (torch.export.load (CPU)" in printed
    assert f"model fingerprint {model_fingerprint(model)}" in printed
    # Loaded by PyTorch itself, the program matches model.embed at batch sizes it never saw.
    extra = {CONTRACT_EXTRA_FILE: "", FINGERPRINT_EXTRA_FILE: ""}
    program = torch.export.load(pt2, extra_files=extra)
    for batch in (1, 3, 7):
        x = torch.from_numpy(np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 32, 32)))
        x = x.float()
        with torch.no_grad():
            got, want = program.module()(x).numpy(), model.embed(x).numpy()
        cos, diff = compare(got, want)
        assert got.shape == (batch, 48) and cos >= MIN_COSINE and diff <= MAX_ABS_DIFF, batch
    contract = json.loads(extra[CONTRACT_EXTRA_FILE])
    assert contract == json.loads((pt2.parent / "glyphs.pt2.json").read_text())
    assert contract["export"]["format"] == "exported-program"
    assert contract["export"]["exporter"] == "torch.export"
    assert contract["model"]["checkpoint"] == str(ckpt.resolve())
    assert extra[FINGERPRINT_EXTRA_FILE] == contract["model"]["fingerprint"]
    assert extra[FINGERPRINT_EXTRA_FILE] == model_fingerprint(model)
    assert sorted(p.name for p in pt2.parent.iterdir()) == [
        "again.bin",
        "again.bin.json",
        "glyphs.pt2",
        "glyphs.pt2.json",
    ]  # no temporary file left


def test_loaded_pt2_embeds_like_pytorch_at_batch_sizes_1_3_7(setup):
    root, _, model, pt2 = setup
    opened = open_index_model(model_file=pt2)
    assert opened.option == "--model" and opened.meta["model_fingerprint"] == model_fingerprint(
        model
    )
    images = torch.stack([opened.transform(im) for im in glyph_images(root, 32)[:7]])
    for batch in (1, 3, 7):
        with torch.no_grad():
            want = model.embed(images[:batch]).numpy()
        got_numpy = opened.model.embed(images[:batch].numpy())
        got_torch = opened.model.embed(images[:batch])
        assert isinstance(got_numpy, np.ndarray) and isinstance(got_torch, torch.Tensor)
        for got in (got_numpy, got_torch.numpy()):
            cos, diff = compare(got, want)
            assert cos >= MIN_COSINE and diff <= MAX_ABS_DIFF, batch
    # An export passed where a checkpoint may be (Python callers) is opened as the export.
    assert open_index_model(checkpoint=pt2).option == "--model"


def test_index_from_the_pt2_equals_the_checkpoint_index(setup, checkpoint_index, capsys):
    root, ckpt, _, pt2 = setup
    common = ["--images", str(root / "images"), "--labels-from-folders", *RUNTIME]
    by_ckpt, by_pt2 = checkpoint_index, root / "idx_pt2"
    assert run(["index", "build", "--model", str(pt2), "--out", str(by_pt2), *common]) == 0
    a, b = EmbeddingIndex.load(by_ckpt), EmbeddingIndex.load(by_pt2)
    assert a.items == b.items and np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=0, atol=1e-5)
    # Exact neighbours by brute force on the checkpoint's embeddings (ties broken by id).
    sims = a.embeddings.astype(np.float64) @ a.embeddings.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    want = np.lexsort((np.broadcast_to(np.arange(len(a)), sims.shape), -sims), axis=1)[:, :4]
    _, got = b.search(None, 4, exclude_self=True)
    np.testing.assert_array_equal(got, want)
    assert b.meta["model_file"] == str(pt2.resolve())
    assert b.meta["model_fingerprint"] == a.meta["model_fingerprint"]
    # The checkpoint searches the .pt2's index and the .pt2 the checkpoint's: the same model.
    query = str(next((root / "images").rglob("*.png")))
    outputs = []
    for index, option, model in ((by_pt2, "--checkpoint", ckpt), (by_ckpt, "--model", pt2)):
        capsys.readouterr()
        argv = ["index", "search", "--index", str(index), query, "--k", "3", option, str(model)]
        assert run([*argv, *RUNTIME]) == 0
        out, err = capsys.readouterr()
        assert "warning" not in err and "error" not in err
        outputs.append([line.split()[-1] for line in out.splitlines() if ".png" in line])
    assert outputs[0] == outputs[1] and len(outputs[0]) >= 3


def test_a_pt2_of_another_run_is_refused(setup, checkpoint_index, tmp_path, capsys):
    root, _, _, _ = setup
    other_ckpt, other = write_run(tmp_path / "other", "glyphnet", seed=1)
    other_pt2 = tmp_path / "other.pt2"
    assert run(["export", "--checkpoint", str(other_ckpt), "--out", str(other_pt2)]) == 0
    query = str(next((root / "images").rglob("*.png")))
    argv = ["index", "search", "--index", str(checkpoint_index), query, "--model", str(other_pt2)]
    line = error_line(capsys, [*argv, *RUNTIME])
    assert f"{other_pt2} is not the model that built" in line
    assert f"its model fingerprint is {model_fingerprint(other)}" in line
    assert "--allow-other-model" in line


def test_a_damaged_pt2_is_one_error_line(setup, tmp_path, capsys):
    root, _, _, pt2 = setup
    build = ["index", "build", "--images", str(root / "images"), "--out", str(tmp_path / "i")]
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    line = error_line(capsys, [*build, "--model", str(garbage), *RUNTIME])
    assert f"{garbage} is not an exported program written by torch.export.save" in line
    assert "rankedlist export --checkpoint RUN --format exported-program" in line
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(pt2.read_bytes()[: pt2.stat().st_size // 2])
    line = error_line(capsys, [*build, "--model", str(truncated), *RUNTIME])
    assert f"{truncated} is not an exported program" in line
    # One weight's bytes flipped inside an otherwise valid archive (the zip's CRC fails).
    flipped = tmp_path / "flipped.pt2"
    with zipfile.ZipFile(pt2) as src, zipfile.ZipFile(flipped, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("weights/weight_0"):
                data = data[: len(data) // 2]  # shorter than its table says
            dst.writestr(info, data)
    line = error_line(capsys, [*build, "--model", str(flipped), *RUNTIME])
    assert f"{flipped} cannot be loaded by torch.export.load" in line and "damaged" in line
    # A valid program that is no embedding model (a (N, 4) -> (N, 4) map), with a contract.
    vector = tmp_path / "vector.pt2"
    program = torch.export.export(
        torch.nn.Linear(4, 4), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("n")},)
    )
    contract = (pt2.parent / "glyphs.pt2.json").read_text()
    torch.export.save(program, vector, extra_files={CONTRACT_EXTRA_FILE: contract})
    line = error_line(capsys, [*build, "--model", str(vector), *RUNTIME])
    assert f"{vector} is not an embedding model: it takes float32 [?, 4]" in line
    # A checkpoint is not an exported program: it says which option takes it.
    line = error_line(capsys, [*build, "--model", str(root / "run" / "best.pt"), *RUNTIME])
    assert "looks like a checkpoint: pass a run folder or its .pt file with --checkpoint" in line
    line = error_line(capsys, [*build, "--model", str(tmp_path / "none.pt2"), *RUNTIME])
    assert "none.pt2 not found" in line
    assert not (tmp_path / "i").exists()


class _WritesAFile:
    """Unpickling this runs code: it writes the file ``path``."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pt2_that_would_unpickle_code_is_refused_and_runs_nothing(setup, tmp_path, capsys):
    # torch.export.load alone unpickles these with weights_only=False or plain pickle: both
    # archives write the marker file when loaded by it.
    root, _, _, pt2 = setup
    build = ["index", "build", "--images", str(root / "images"), "--out", str(tmp_path / "i")]
    marker = tmp_path / "code_ran"
    payload_path = tmp_path / "payload.pt"
    torch.save({"x": _WritesAFile(marker)}, payload_path)
    with zipfile.ZipFile(pt2) as src:
        infos = [(info, src.read(info)) for info in src.infolist()]
    # 1. A weight marked "pickled" whose bytes hold a pickle that runs code.
    pickled = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(pickled, "w") as dst:
        for info, data in infos:
            if info.filename.endswith("weights/model_weights_config.json"):
                table = json.loads(data)
                first = next(iter(table["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(table).encode()
            elif info.filename.endswith("weights/weight_0"):
                data = payload_path.read_bytes()
            dst.writestr(info, data)
    line = error_line(capsys, [*build, "--model", str(pickled), *RUNTIME])
    assert f"{pickled} cannot be loaded by torch.export.load" in line
    # 2. An "opaque object" constant: plain pickle.loads in torch.export.load.
    opaque = tmp_path / "opaque.pt2"
    constant = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
    with zipfile.ZipFile(opaque, "w") as dst:
        for info, data in infos:
            if info.filename.endswith("constants/model_constants_config.json"):
                data = json.dumps({"config": {"c": {**constant, "tensor_meta": None}}}).encode()
            dst.writestr(info, data)
        dst.writestr("archive/data/constants/opaque_obj_0", pickle.dumps(_WritesAFile(marker)))
    line = error_line(capsys, [*build, "--model", str(opaque), *RUNTIME])
    assert f"{opaque} holds data/constants/opaque_obj_0" in line and "run code" in line
    assert not marker.exists()
    assert not (tmp_path / "i").exists()


def test_export_help_names_the_onnx_exporter_pytorch_recommends(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "torch.onnx.export(dynamo=True)" in text and "recommends" in text
    assert "exported-program" in text and ".pt2" in text and "torch.export.load" in text
    # It is the installed PyTorch's default ONNX exporter, the one it recommends.
    assert inspect.signature(torch.onnx.export).parameters["dynamo"].default is True


def test_torchscript_exports_carry_the_fingerprint_and_build_the_same_index(
    setup, checkpoint_index
):
    root, ckpt, model, _ = setup
    reference = EmbeddingIndex.load(checkpoint_index)
    for name in ("glyphs.ts", "glyphs_ts.pt"):  # a TorchScript .pt is told from a checkpoint
        ts = root / "exports" / name
        assert run(["export", "--checkpoint", str(ckpt), "--out", str(ts)]) == 0
        extra = {CONTRACT_EXTRA_FILE: "", FINGERPRINT_EXTRA_FILE: ""}
        with pytest.warns(FutureWarning):  # torch.jit.load is deprecated
            torch.jit.load(str(ts), _extra_files=extra)
        assert extra[FINGERPRINT_EXTRA_FILE].decode() == model_fingerprint(model)
        sidecar = json.loads(ts.with_name(name + ".json").read_text())
        assert sidecar["model"]["fingerprint"] == model_fingerprint(model)
        out = root / f"idx_{name.replace('.', '_')}"
        argv = ["index", "build", "--model", str(ts), "--out", str(out)]
        assert run([*argv, "--images", str(root / "images"), *RUNTIME]) == 0
        built = EmbeddingIndex.load(out)
        assert built.meta["model_fingerprint"] == model_fingerprint(model)
        assert built.items == reference.items
        np.testing.assert_allclose(built.embeddings, reference.embeddings, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:No complete tensor found:UserWarning")  # torch.export.save
def test_a_pt2_without_a_contract_needs_its_sidecar(setup, tmp_path, capsys):
    root, _, model, pt2 = setup
    build = ["index", "build", "--images", str(root / "images"), "--out", str(tmp_path / "i")]
    bare = tmp_path / "bare.pt2"  # the same program saved without rankedlist's extra files
    torch.export.save(torch.export.load(pt2), bare)
    line = error_line(capsys, [*build, "--model", str(bare), *RUNTIME])
    assert f"{bare} carries no rankedlist input contract" in line and "bare.pt2.json" in line
    assert not (tmp_path / "i").exists()
    (tmp_path / "bare.pt2.json").write_text((pt2.parent / "glyphs.pt2.json").read_text())
    assert run([*build, "--model", str(bare), *RUNTIME]) == 0  # the sidecar is enough
    # Without the recorded fingerprint, the weights' own is the checkpoint's.
    assert EmbeddingIndex.load(tmp_path / "i").meta["model_fingerprint"] == model_fingerprint(model)


def test_a_model_torch_export_cannot_capture_is_one_line_and_writes_nothing(
    setup, tmp_path, capsys, monkeypatch
):
    _, ckpt, _, _ = setup

    def cannot_capture(*args, **kwargs):
        raise RuntimeError("data-dependent control flow\nmore detail")

    monkeypatch.setattr(torch.export, "export", cannot_capture)
    out = tmp_path / "exports" / "m.pt2"
    line = error_line(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert "torch.export cannot capture the model (data-dependent control flow)" in line
    assert "try --format onnx or --format torchscript" in line
    assert list(out.parent.iterdir()) == []
