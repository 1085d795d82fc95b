"""`rankedlist export` and `rankedlist index build|add|search --model FILE.onnx`.

The commands are run through their own parsers and runners (``add_parser`` and ``run`` of
``rankedlist.cli.export`` / ``rankedlist.cli.index``), as ``rankedlist`` runs them. An index
built from the ONNX export must equal the one built from the checkpoint; every bad input ends
with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from _export_helpers import glyph_images, write_run
from onnx import TensorProto, helper

from rankedlist.cli import export as export_cli
from rankedlist.cli import index as index_cli
from rankedlist.export import export_checkpoint
from rankedlist.retrieval import EmbeddingIndex
from rankedlist.training import save_checkpoint

RUNTIME = ["--device", "cpu", "--no-progress"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankedlist")
    sub = p.add_subparsers(dest="command")
    export_cli.add_parser(sub)
    index_cli.add_parser(sub)
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "export":
        return export_cli.run(args)
    return index_cli.run(args)


def error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A GlyphNet run, its ONNX export (through the command) and two folders of glyph images."""
    root = tmp_path_factory.mktemp("export_cli")
    ckpt, model = write_run(root / "run", "glyphnet")
    images = glyph_images(root, 32)
    for i, image in enumerate(images):
        folder = root / ("first" if i < len(images) // 2 else "later") / f"class_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"g{i:02d}.png")
    return root, ckpt, model


def test_export_command_writes_a_checked_file_and_its_contract(setup, capsys):
    root, ckpt, _ = setup
    out = root / "exports" / "glyphs.onnx"
    assert run(["export", "--checkpoint", str(root / "run"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}: ONNX opset 18" in printed
    assert "images: float32 [batch, 3, 32, 32], resize to 32 x 32; RGB, /255" in printed
    assert "output embeddings: float32 [batch, 48], L2-normalised" in printed
    parity = next(line for line in printed.splitlines() if "parity with PyTorch" in line)
    assert "onnxruntime (CPU)" in parity and "min cosine 1.0000000" in parity
    sidecar = json.loads((root / "exports" / "glyphs.onnx.json").read_text())
    assert sidecar["model"]["checkpoint"] == str(ckpt.resolve())
    assert sorted(p.name for p in out.parent.iterdir()) == ["glyphs.onnx", "glyphs.onnx.json"]
    ts = root / "exports" / "glyphs.pt"
    assert run(["export", "--checkpoint", str(ckpt), "--out", str(ts)]) == 0
    assert "TorchScript via torch.jit.trace" in capsys.readouterr().out


def test_a_failed_parity_check_writes_nothing(setup, capsys, monkeypatch):
    root, ckpt, _ = setup
    from rankedlist.export import checked_export as module

    real = module.run_exported
    monkeypatch.setattr(module, "run_exported", lambda *a: real(*a) + 0.01)  # a broken runtime
    out = root / "broken" / "m.onnx"
    line = error_line(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    assert "does not reproduce PyTorch's embeddings" in line and f"{out} was not written" in line
    assert list(out.parent.iterdir()) == []  # no file, no temporary file


def nan_rows(rows: str):
    """A forward hook that makes row 0 (``rows="one"``) or every row (``"all"``) NaN; written
    with ``torch.where`` so that tracing and ONNX export record it as part of the model."""

    def hook(module, inputs, output):
        index = torch.arange(output.shape[0]).unsqueeze(1)
        hit = index == 0 if rows == "one" else index >= 0
        return torch.where(hit, torch.full_like(output, float("nan")), output)

    return hook


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("rows", ["one", "all"])
def test_a_model_that_outputs_nan_fails_the_check_and_writes_nothing(
    setup, tmp_path, capsys, monkeypatch, fmt, rows
):
    # `nan < 0.9999` is false: NaN embeddings used to pass the parity check and be written.
    root, ckpt, _ = setup
    if rows == "all":  # a checkpoint whose weights hold a NaN: every embedding is NaN
        state = torch.load(ckpt, weights_only=True)
        name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.ndim > 1)
        state["model"][name] = torch.full_like(state["model"][name], float("nan"))
        ckpt = save_checkpoint(state, tmp_path / "nan_run" / "best.pt")
    else:  # finite weights, but the model's last layer makes image 0's embedding NaN
        from rankedlist.training import checkpoint_model

        real = checkpoint_model.load_model_from_checkpoint

        def with_a_nan_row(*args, **kwargs):
            loaded = real(*args, **kwargs)
            loaded.model.heads["high"].register_forward_hook(nan_rows("one"))
            return loaded

        monkeypatch.setattr(checkpoint_model, "load_model_from_checkpoint", with_a_nan_row)
    out = tmp_path / "exports" / ("m.onnx" if fmt == "onnx" else "m.pt")
    line = error_line(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    count = "1 of 4" if rows == "one" else "4 of 4"
    assert f"non-finite embeddings (NaN or inf) in PyTorch itself, for {count}" in line
    assert f"{out} was not written" in line and "export an earlier checkpoint" in line
    assert list(out.parent.iterdir()) == []  # no file, no sidecar, no temporary file


@pytest.mark.parametrize(
    ("fmt", "rows"), [("onnx", "one"), ("torchscript", "all"), ("exported-program", "one")]
)
def test_an_exported_file_that_outputs_nan_fails_the_check_and_writes_nothing(
    setup, tmp_path, capsys, monkeypatch, fmt, rows
):
    root, ckpt, _ = setup
    from rankedlist.export import checked_export as module

    real = module.run_exported

    def broken_runtime(*args):  # PyTorch's embeddings are finite, the runtime's are not
        got = np.array(real(*args), dtype=np.float32)
        got[: 1 if rows == "one" else len(got)] = np.nan
        return got

    monkeypatch.setattr(module, "run_exported", broken_runtime)
    out = tmp_path / "exports" / {"onnx": "m.onnx", "torchscript": "m.pt"}.get(fmt, "m.pt2")
    line = error_line(capsys, ["export", "--checkpoint", str(ckpt), "--out", str(out)])
    count = "1 of 4" if rows == "one" else "4 of 4"
    assert f"the exported {fmt} model gives non-finite embeddings (NaN or inf) for {count}" in line
    assert f"{out} was not written" in line and "Try the other --format" in line
    assert list(out.parent.iterdir()) == []


def test_export_bad_input_is_one_line(setup, tmp_path, capsys, monkeypatch):
    root, ckpt, _ = setup
    base = ["export", "--checkpoint", str(ckpt)]
    line = error_line(capsys, [*base, "--out", str(tmp_path)])
    assert f"--out {tmp_path} is a folder; pass the file to write" in line
    line = error_line(capsys, [*base, "--out", str(tmp_path / "m.bin")])
    assert "cannot tell the export format from" in line and "--format onnx" in line
    line = error_line(capsys, ["export", "--checkpoint", str(tmp_path / "nope"), "--out", "m.onnx"])
    assert "nope not found" in line
    import rankedlist.extras

    real_import = rankedlist.extras.importlib.import_module

    def without_onnx(name, *args):
        if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args)

    monkeypatch.setattr(rankedlist.extras.importlib, "import_module", without_onnx)
    line = error_line(capsys, [*base, "--out", str(tmp_path / "m.onnx")])
    assert "ONNX export needs onnx, onnxruntime and onnxscript" in line
    assert "pip install 'rankedlist[export]'" in line


@pytest.fixture(scope="module")
def exported(setup):
    root, ckpt, _ = setup
    return export_checkpoint(ckpt, root / "model.onnx", check=False).path


def test_index_from_the_onnx_model_equals_the_checkpoint_index(setup, exported, capsys):
    root, ckpt, _ = setup
    images = root / "first"
    common = ["--images", str(images), "--labels-from-folders", *RUNTIME]
    by_ckpt, by_onnx = root / "idx_ckpt", root / "idx_onnx"
    assert run(["index", "build", "--checkpoint", str(ckpt), "--out", str(by_ckpt), *common]) == 0
    assert run(["index", "build", "--model", str(exported), "--out", str(by_onnx), *common]) == 0
    a, b = EmbeddingIndex.load(by_ckpt), EmbeddingIndex.load(by_onnx)
    assert a.items == b.items and np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=0, atol=1e-5)
    sa, ra = a.search(None, 4, exclude_self=True)
    sb, rb = b.search(None, 4, exclude_self=True)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    assert b.meta["model_file"] == str(exported.resolve())
    assert b.meta["input_contract"]["transform_style"] == "glyphs"
    assert b.meta["exported_from"] == str(ckpt.resolve())
    # search and add use the model the index records: the ONNX file.
    capsys.readouterr()
    query = next((root / "later").rglob("*.png"))
    assert run(["index", "search", "--index", str(by_onnx), str(query), "--k", "3", *RUNTIME]) == 0
    assert "warning" not in capsys.readouterr().err
    add = ["index", "add", "--index", str(by_onnx), "--images", str(root / "later"), *RUNTIME]
    assert run(add) == 0
    grown = EmbeddingIndex.load(by_onnx)
    assert len(grown) == len(b) + len(list((root / "later").rglob("*.png")))


def not_an_embedding_model(path):
    """A valid ONNX model that maps a (N, 4) vector to itself."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_an_onnx_file_that_is_not_an_embedding_model_is_one_error_line(
    setup, exported, tmp_path, capsys
):
    root, _, _ = setup
    build = ["index", "build", "--images", str(root / "first"), "--out", str(tmp_path / "i")]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    line = error_line(capsys, [*build, "--model", str(garbage), *RUNTIME])
    assert f"{garbage} is not an ONNX model onnxruntime can load" in line
    assert "rankedlist export --checkpoint RUN --format onnx" in line
    vector = not_an_embedding_model(tmp_path / "vector.onnx")
    line = error_line(capsys, [*build, "--model", str(vector), *RUNTIME])
    assert f"{vector} is not an embedding model: it takes tensor(float) [N, 4]" in line
    # An embedding model stripped of its contract, with no sidecar: preparation unknown.
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    line = error_line(capsys, [*build, "--model", str(bare), *RUNTIME])
    assert f"{bare} carries no rankedlist input contract" in line and "bare.onnx.json" in line
    shutil.copy(exported.with_name("model.onnx.json"), tmp_path / "bare.onnx.json")
    assert run([*build, "--model", str(bare), *RUNTIME]) == 0  # the sidecar is enough
    line = error_line(capsys, [*build, "--model", str(tmp_path / "none.onnx"), *RUNTIME])
    assert "none.onnx not found" in line
    assert not (tmp_path / "i2").exists()
