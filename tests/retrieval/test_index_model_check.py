"""An index refuses what would give silently wrong answers: another model's embeddings, a
damaged ``index.faiss``; and ``search --json`` names each hit's class.

* The model's fingerprint (``rankedlist.models.fingerprint``): a sha256 of the weights, equal
  for a checkpoint and its ONNX export, different for a second training of the same
  architecture; ``index search|add`` refuse such a model with one line unless
  ``--allow-other-model``.
* The sha256 of every file, recorded in meta.json: bytes overwritten in the vectors of an hnsw
  ``index.faiss`` (which gave similarities of about 1e36) are refused before any result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _retrieval_helpers import make_image_folder, write_checkpoint
from PIL import Image

from rankedlist.cli.main import main as cli
from rankedlist.data import build_transform
from rankedlist.models import model_fingerprint
from rankedlist.retrieval import EmbeddingIndex, open_index_model
from rankedlist.training.checkpoint_model import load_model_from_checkpoint

RUNTIME = ["--device", "cpu", "--no-progress", "--batch-size", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two checkpoints of one architecture (seeds 0 and 1), 12 images in 3 classes, and the
    labelled exact index of the first."""
    root = tmp_path_factory.mktemp("index_model_check")
    ckpt, model, _ = write_checkpoint(root / "run" / "best.pt", seed=0)
    other, other_model, _ = write_checkpoint(root / "other" / "best.pt", seed=1)
    images = make_image_folder(root / "images", classes=3, per_class=4)
    build = ["index", "build", "--checkpoint", str(ckpt), "--images", str(images), "--out",
             str(root / "idx"), "--labels-from-folders", *RUNTIME]  # fmt: skip
    assert cli(build) == 0
    return root, ckpt, model, other, other_model, images


def run(capsys, argv) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the stderr lines of the `rankedlist` command."""
    capsys.readouterr()
    code = cli(argv)
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def embed(model, paths) -> np.ndarray:
    """By hand: PIL decode, the glyph test transform at 32 px, model.embed."""
    transform = build_transform("glyphs", train=False, image_size=32)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.eval().embed(x).numpy()


def top_k(query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy cosine top-k (both sides unit vectors), ties to the lower row."""
    s = gallery.astype(np.float64) @ query.astype(np.float64)
    order = np.argsort(-s, kind="stable")[:k]
    return s[order], order


# ---------------------------------------------------------------- the model's fingerprint


def test_the_fingerprint_is_a_sha256_of_the_weights_alone(setup):
    root, ckpt, model, other, other_model, _ = setup
    fp = model_fingerprint(model)
    assert len(fp) == 16 and all(c in "0123456789abcdef" for c in fp)
    # The recipe, by hand: sha256 over name, dtype, shape and bytes of each entry, sorted.
    state = model.state_dict()
    digest = hashlib.sha256(b"rankedlist model fingerprint 1\n")
    for name in sorted(state):
        t = state[name].detach().cpu()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        digest.update(t.numpy().tobytes())
    assert fp == digest.hexdigest()[:16]
    # The same weights from the file, in training mode, or as a state_dict: the same model.
    loaded = load_model_from_checkpoint(ckpt, device="cpu").model
    assert model_fingerprint(loaded.train()) == model_fingerprint(state) == fp
    assert open_index_model(checkpoint=ckpt, device="cpu").meta["model_fingerprint"] == fp
    # Another seed of the same architecture, or one weight one ulp away: another model.
    assert model_fingerprint(other_model) != fp
    nudged = {k: v.clone() for k, v in state.items()}
    first = next(k for k, v in nudged.items() if v.is_floating_point())
    corner = (0,) * nudged[first].dim()
    value = nudged[first][corner]
    nudged[first][corner] = torch.nextafter(value, torch.tensor(np.inf, dtype=value.dtype))
    assert model_fingerprint(nudged) != fp
    meta = json.loads((root / "idx" / "meta.json").read_text())
    assert meta["model_fingerprint"] == fp  # the index records its model's


def test_the_onnx_export_carries_the_checkpoint_fingerprint(setup, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from rankedlist.export import export_checkpoint
    from rankedlist.export.onnx_model import load_onnx_model

    root, ckpt, model, other, _, images = setup
    path = export_checkpoint(ckpt, tmp_path / "model.onnx", check=False).path
    written = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert written["rankedlist.model_fingerprint"] == model_fingerprint(model)
    assert load_onnx_model(path).fingerprint == model_fingerprint(model)
    # The checkpoint's index searched with its export: the same model, no word said.
    query = str(images / "class_2" / "img_1.png")
    search = ["index", "search", "--index", str(root / "idx"), query, "--k", "2", *RUNTIME]
    code, out, err = run(capsys, [*search, "--model", str(path)])
    assert (code, err) == (0, []) and "class_2/img_1.png" in out.splitlines()[1]
    # The export of another model is refused.
    other_path = export_checkpoint(other, tmp_path / "other.onnx", check=False).path
    code, out, err = run(capsys, [*search, "--model", str(other_path)])
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith(f"error: {other_path} is not the model that built {root / 'idx'}")
    # A file without the fingerprint (exported by an older rankedlist) is named by its bytes.
    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if "fingerprint" not in p.key]
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    sha = hashlib.sha256(bare.read_bytes()).hexdigest()
    assert load_onnx_model(bare).fingerprint == f"file:{sha[:16]}"


def test_another_model_of_the_same_architecture_is_refused(setup, tmp_path, capsys):
    root, ckpt, model, other, other_model, images = setup
    idx = shutil.copytree(root / "idx", tmp_path / "idx")
    query = images / "class_1" / "img_3.png"
    search = ["index", "search", "--index", str(idx), str(query), "--k", "3", "--json",
              str(tmp_path / "hits.json"), *RUNTIME]  # fmt: skip

    code, out, err = run(capsys, [*search, "--checkpoint", str(other)])
    assert code == 2 and out == "" and len(err) == 1, err  # not one result printed
    line = err[0]
    assert line.startswith(f"error: {other} is not the model that built {idx} ({ckpt.resolve()})")
    assert model_fingerprint(other_model) in line and model_fingerprint(model) in line
    assert line.endswith("or pass --allow-other-model (allow_other_model=True in Python) to use "
                         "it anyway")  # fmt: skip
    assert not (tmp_path / "hits.json").exists()

    # Forced: the other model's answers, said with one warning.
    code, out, err = run(capsys, [*search, "--checkpoint", str(other), "--allow-other-model"])
    assert code == 0 and len(err) == 1 and err[0].startswith("warning: ")
    assert "similarities are only meaningful with the same model" in err[0]
    index = EmbeddingIndex.load(idx)
    sims, rows = top_k(embed(other_model, [query])[0], index.embeddings, 3)
    (hit,) = json.loads((tmp_path / "hits.json").read_text())
    assert [r["item"] for r in hit["results"]] == [index.items[i] for i in rows]
    np.testing.assert_allclose([r["similarity"] for r in hit["results"]], sims, atol=1e-5)

    # The index's own model, recorded or given: the query finds itself, similarity 1.
    for given in ([], ["--checkpoint", str(ckpt)]):
        code, out, err = run(capsys, [*search, *given])
        assert (code, err) == (0, [])
        top = json.loads((tmp_path / "hits.json").read_text())[0]["results"][0]
        assert top["item"] == "class_1/img_3.png" and top["similarity"] == pytest.approx(1, 1e-5)

    # add refuses it too, and the index stays as it was.
    add = ["index", "add", "--index", str(idx), "--images", str(root / "images" / "class_0"),
           "--checkpoint", str(other), *RUNTIME]  # fmt: skip
    code, out, err = run(capsys, add)
    assert code == 2 and len(err) == 1 and f"{other} is not the model that built" in err[0]
    assert len(EmbeddingIndex.load(idx)) == 12


def test_a_checkpoint_overwritten_since_the_build_is_refused(setup, tmp_path, capsys):
    root, ckpt, model, other, other_model, images = setup
    mine = tmp_path / "run" / "best.pt"
    mine.parent.mkdir()
    shutil.copy(ckpt, mine)
    build = ["index", "build", "--checkpoint", str(mine), "--images", str(images / "class_0"),
             "--out", str(tmp_path / "idx"), *RUNTIME]  # fmt: skip
    assert cli(build) == 0
    shutil.copy(other, mine)  # the run was trained again into the same folder
    query = str(images / "class_0" / "img_0.png")
    code, out, err = run(capsys, ["index", "search", "--index", str(tmp_path / "idx"), query,
                                  *RUNTIME])  # fmt: skip
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith(
        f"error: the model {mine.resolve()} that built {tmp_path / 'idx'} has changed since "
        f"(model fingerprint {model_fingerprint(other_model)}, the index records "
        f"{model_fingerprint(model)})"
    )


# ---------------------------------------------------------------- damaged files


def test_damaged_vectors_in_an_hnsw_index_are_refused_before_any_result(setup, tmp_path, capsys):
    root, ckpt, model, _, _, images = setup
    idx = tmp_path / "idx"
    build = ["index", "build", "--checkpoint", str(ckpt), "--images", str(images), "--out",
             str(idx), "--method", "hnsw", *RUNTIME]  # fmt: skip
    assert cli(build) == 0
    faiss_file = idx / "index.faiss"
    good = faiss_file.read_bytes()
    # The vectors are the last 12 x 16 float32 of the file (the IndexFlat storage): overwrite
    # 32 bytes in their middle with floats of about 1e37, as a bad disk block would.
    middle = len(good) - 12 * 16 * 4 // 2
    faiss_file.write_bytes(good[:middle] + b"\x7e" * 32 + good[middle + 32 :])
    query = images / "class_2" / "img_0.png"
    search = ["index", "search", "--index", str(idx), str(query), "--k", "4", "--json",
              str(tmp_path / "hits.json"), *RUNTIME]  # fmt: skip
    code, out, err = run(capsys, search)
    assert code == 2 and out == "" and len(err) == 1, (out, err)
    assert err[0].startswith(f"error: {faiss_file} is corrupt: its sha256 differs")
    assert err[0].endswith(
        f"rebuild the index with `rankedlist index build --checkpoint {ckpt.resolve()} "
        f"--images {images.resolve()} --out {idx}`"
    )
    assert not (tmp_path / "hits.json").exists()
    with pytest.raises(ValueError, match="index.faiss is corrupt"):
        EmbeddingIndex.load(idx, mmap=True)

    faiss_file.write_bytes(good)  # the file as saved: the exact answers
    code, out, err = run(capsys, search)
    assert (code, err) == (0, [])
    index = EmbeddingIndex.load(idx)
    row = index.items.index("class_2/img_0.png")
    sims, rows = top_k(index.embeddings[row], index.embeddings, 4)
    (hit,) = json.loads((tmp_path / "hits.json").read_text())
    assert [r["item"] for r in hit["results"]] == [index.items[i] for i in rows]
    np.testing.assert_allclose([r["similarity"] for r in hit["results"]], sims, atol=1e-5)


def test_an_index_saved_without_checksums_is_still_read(setup, tmp_path):
    root = setup[0]
    idx = shutil.copytree(root / "idx", tmp_path / "idx")
    meta = json.loads((idx / "meta.json").read_text())
    sums = meta.pop("checksums")
    assert set(sums) == {"embeddings.npy", "items.json", "labels.npy"}
    for name, entry in sums.items():
        data = (idx / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (idx / "meta.json").write_text(json.dumps(meta))  # as rankedlist wrote it before checksums
    index = EmbeddingIndex.load(idx)
    assert len(index) == 12 and "checksums" not in index.meta
    index.save(idx)  # the next save records them
    assert json.loads((idx / "meta.json").read_text())["checksums"] == sums


# ---------------------------------------------------------------- --json


def test_search_json_gives_the_class_name_and_its_id(setup, tmp_path, capsys):
    root, _, _, _, _, images = setup
    queries = [str(images / "class_0" / "img_1.png"), str(images / "class_2" / "img_3.png")]
    out = tmp_path / "hits.json"
    code, _, err = run(capsys, ["index", "search", "--index", str(root / "idx"), *queries,
                                "--k", "12", "--json", str(out), *RUNTIME])  # fmt: skip
    assert (code, err) == (0, [])
    hits = json.loads(out.read_text())
    assert [h["query"] for h in hits] == queries
    for hit in hits:
        assert len(hit["results"]) == 12
        for r in hit["results"]:
            folder = Path(r["item"]).parts[0]  # the class is the image's sub-folder
            assert r["label"] == folder
            assert r["label_id"] == ["class_0", "class_1", "class_2"].index(folder)
