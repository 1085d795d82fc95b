"""`rankedlist index build|search` on bad input: one `error:` line naming the file and the fix.

Every case runs the `rankedlist` command itself (``main([...])``) and checks that it returns a
non-zero exit code with exactly one line on stderr, ``error: ...``, that names the culprit file.
"""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
from _retrieval_helpers import listing, make_image_folder, write_checkpoint

from rankedlist.cli.main import main as cli
from rankedlist.retrieval import EmbeddingIndex, build_index_from_checkpoint
from rankedlist.retrieval import embedding_index as embedding_index_module
from rankedlist.retrieval import images_to_index as images_to_index_module
from rankedlist.retrieval import index_files as index_files_module

RUNTIME = ["--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, 3 x 4 images in class folders and their labelled index."""
    root = tmp_path_factory.mktemp("cli_errors")
    ckpt, _, _ = write_checkpoint(root / "run" / "best.pt")
    images = make_image_folder(root / "images", classes=3, per_class=4)
    index = build_index_from_checkpoint(
        ckpt, images, device="cpu", progress=False, labels_from_folders=True
    )
    index.save(root / "idx")
    return root, ckpt, images


def error_line(capsys, argv):
    """Run the command; it must fail with exactly one stderr line, ``error: ...``."""
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def corrupt_jpeg(path):
    """Random bytes under a .jpg name: a photo that a broken download left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    return path


# ---------------------------------------------------------------- 1. a damaged index folder


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _without(key):
    def damage(path):
        meta = json.loads(path.read_text())
        del meta[key]
        path.write_text(json.dumps(meta))

    return damage


def _with(**changes):
    def damage(path):
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return damage


DAMAGE = {
    "embeddings-truncated": ("embeddings.npy", _truncate),
    "embeddings-header-only": ("embeddings.npy", lambda p: p.write_bytes(p.read_bytes()[:40])),
    "embeddings-empty": ("embeddings.npy", lambda p: p.write_bytes(b"")),
    "embeddings-garbage": ("embeddings.npy", lambda p: p.write_bytes(b"\x00garbage" * 50)),
    "meta-truncated": ("meta.json", _truncate),
    "meta-empty": ("meta.json", lambda p: p.write_text("")),
    "meta-garbage": ("meta.json", lambda p: p.write_bytes(b"\xff\xfe\x00not json")),
    "meta-a-list": ("meta.json", lambda p: p.write_text("[1, 2, 3]")),
    "meta-no-num_items": ("meta.json", _without("num_items")),
    "meta-no-has_labels": ("meta.json", _without("has_labels")),
    "meta-dim-a-word": ("meta.json", _with(embedding_dim="x")),
    "items-truncated": ("items.json", _truncate),
    "items-not-names": ("items.json", lambda p: p.write_text(json.dumps([1] * 12))),
    "labels-truncated": ("labels.npy", _truncate),
    "labels-floats": ("labels.npy", lambda p: np.save(p, np.zeros(12))),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_search_of_a_damaged_index_names_the_file_and_says_rebuild(setup, tmp_path, capsys, case):
    root, ckpt, images = setup
    name, damage = DAMAGE[case]
    idx = shutil.copytree(root / "idx", tmp_path / "idx")
    damage(idx / name)
    query = str(images / "class_0" / "img_0.png")

    line = error_line(capsys, ["index", "search", "--index", str(idx), query, *RUNTIME])
    assert str(idx / name) in line, line
    assert "rebuild the index with `rankedlist index build --checkpoint" in line
    assert f"--out {idx}`" in line
    if name != "meta.json":  # meta.json readable: the hint gives the real checkpoint and images
        assert f"--checkpoint {ckpt.resolve()} --images {images.resolve()}" in line

    with pytest.raises(ValueError, match=name):  # the Python API: a ValueError naming the file
        EmbeddingIndex.load(idx)
    if name == "embeddings.npy":
        with pytest.raises(ValueError, match=name):
            EmbeddingIndex.load(idx, mmap=True)


def test_truncated_embeddings_say_truncated(setup, tmp_path, capsys):
    root, _, images = setup
    idx = shutil.copytree(root / "idx", tmp_path / "idx")
    _truncate(idx / "embeddings.npy")
    query = str(images / "class_0" / "img_0.png")
    line = error_line(capsys, ["index", "search", "--index", str(idx), query, *RUNTIME])
    assert line.startswith(f"error: {idx / 'embeddings.npy'} is truncated or corrupt (")


# ---------------------------------------------------------------- 2. a damaged checkpoint


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_build_with_a_damaged_checkpoint_names_it(setup, tmp_path, capsys, kind):
    root, ckpt, images = setup
    data = ckpt.read_bytes()
    content = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x80\x04junk" * 40}
    bad = tmp_path / f"{kind}.pt"
    bad.write_bytes(content[kind])
    out = tmp_path / "idx"
    argv = ["index", "build", "--checkpoint", str(bad), "--images", str(images), "--out", str(out)]
    line = error_line(capsys, [*argv, *RUNTIME])
    assert str(bad) in line
    assert not out.exists()


def test_build_names_the_checkpoint_whatever_the_loader_raises(
    setup, tmp_path, capsys, monkeypatch
):
    """torch.load's own errors (RuntimeError, EOFError, UnpicklingError) become one line too,
    whichever of them the checkpoint loader lets through."""
    import rankedlist.training

    root, ckpt, images = setup

    def raw_torch_error(path, map_location="cpu"):
        raise RuntimeError(
            "PytorchStreamReader failed reading zip archive: failed finding central directory\n"
            "  (a second line that must not reach the terminal as a line of its own)"
        )

    monkeypatch.setattr(rankedlist.training.checkpoint, "load_checkpoint", raw_torch_error)
    argv = ["index", "build", "--checkpoint", str(ckpt), "--images", str(images),
            "--out", str(tmp_path / "idx"), *RUNTIME]  # fmt: skip
    line = error_line(capsys, argv)
    assert f"checkpoint {ckpt} is not a readable rankedlist checkpoint" in line
    assert "failed finding central directory" in line


# ---------------------------------------------------------------- 3. --out checked first


def _no_embedding(*args, **kwargs):
    raise AssertionError("index build embedded the images before checking --out")


@pytest.mark.parametrize("kind", ["file", "other-folder", "under-a-file", "read-only"])
def test_build_checks_out_before_embedding(setup, tmp_path, capsys, monkeypatch, kind):
    root, ckpt, images = setup
    monkeypatch.setattr(images_to_index_module, "embed_images", _no_embedding)
    if kind == "file":
        out = tmp_path / "index.npy"
        out.write_bytes(b"mine")
    elif kind == "other-folder":
        out = tmp_path / "photos"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        (out / "meta.json").write_text('{"not": "an index"}')
    elif kind == "under-a-file":
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / "idx"
    else:  # a read-only disk or folder (faked: root may write anywhere)
        out = tmp_path / "ro" / "idx"

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

        monkeypatch.setattr(index_files_module.tempfile, "mkdtemp", read_only)
    argv = ["index", "build", "--checkpoint", str(ckpt), "--images", str(images),
            "--out", str(out), *RUNTIME]  # fmt: skip
    line = error_line(capsys, argv)
    assert line.startswith("error: --out: ") and str(out) in line
    assert line.endswith("choose another output folder") or line.endswith(
        "choose another output folder or delete it"
    )
    if kind == "read-only":
        assert "is not writable (Read-only file system)" in line
        assert not (tmp_path / "ro").exists()  # nothing created before the failure
    elif kind == "file":
        assert out.read_bytes() == b"mine"
    elif kind == "other-folder":
        assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["missing", "empty", "an-index", "a-damaged-index"])
def test_build_accepts_an_out_it_may_replace(setup, tmp_path, capsys, monkeypatch, kind):
    root, ckpt, images = setup
    out = tmp_path / "new" / "idx"
    if kind == "empty":
        out.mkdir(parents=True)
    elif kind == "an-index":
        shutil.copytree(root / "idx", out)
    elif kind == "a-damaged-index":
        shutil.copytree(root / "idx", out)
        (out / "meta.json").write_text("{trunc")

    def sentinel(*args, **kwargs):
        raise ValueError("embedding reached")

    monkeypatch.setattr(images_to_index_module, "embed_images", sentinel)
    argv = ["index", "build", "--checkpoint", str(ckpt), "--images", str(images),
            "--out", str(out), *RUNTIME]  # fmt: skip
    assert error_line(capsys, argv) == "error: embedding reached"


def test_a_full_disk_while_saving_names_out_and_keeps_the_old_index(
    setup, tmp_path, capsys, monkeypatch
):
    root, ckpt, images = setup
    out = shutil.copytree(root / "idx", tmp_path / "idx")
    before = (out / "embeddings.npy").read_bytes()

    def disk_full(path, arr):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(embedding_index_module, "write_npy", disk_full)
    argv = ["index", "build", "--checkpoint", str(ckpt), "--images", str(images),
            "--out", str(out), *RUNTIME]  # fmt: skip
    line = error_line(capsys, argv)
    assert line.startswith(f"error: could not write the index to {out} (No space left on device")
    assert "free disk space or choose another --out" in line
    assert (out / "embeddings.npy").read_bytes() == before
    assert listing(tmp_path) == ["idx"]  # no temporary folder left


# ---------------------------------------------------------------- 4. unreadable images


@pytest.mark.parametrize("workers", [0, 2])
def test_build_with_a_corrupt_jpeg_names_it_and_the_cli_option(tmp_path, setup, capsys, workers):
    root, ckpt, _ = setup
    images = make_image_folder(tmp_path / "images", classes=2, per_class=2)
    bad = corrupt_jpeg(images / "class_1" / "x.jpg")
    argv = ["index", "build", "--checkpoint", str(ckpt), "--images", str(images),
            "--out", str(tmp_path / "idx"), "--num-workers", str(workers), *RUNTIME]  # fmt: skip
    line = error_line(capsys, argv)
    assert line.startswith(f"error: cannot decode image {bad}: ")
    assert "pass --skip-corrupt" in line and "skip_corrupt=True" not in line
    assert not (tmp_path / "idx").exists()

    assert cli([*argv, "--skip-corrupt"]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.splitlines()
    assert warning.startswith(f"warning: skipping unreadable image {bad}: ")
    assert "indexed 4 images" in captured.out
    assert "class_1/x.jpg" not in EmbeddingIndex.load(tmp_path / "idx").items


def test_search_with_a_corrupt_query_names_it_or_skips_it(setup, tmp_path, capsys):
    root, ckpt, images = setup
    bad = corrupt_jpeg(tmp_path / "queries" / "x.jpg")
    good = images / "class_2" / "img_3.png"
    search = ["index", "search", "--index", str(root / "idx"), *RUNTIME]
    line = error_line(capsys, [*search, str(good), str(bad)])
    assert line.startswith(f"error: cannot decode query image {bad}: ")
    assert line.endswith(
        "Replace or delete the file, or pass --skip-corrupt to skip unreadable query images "
        "with a warning"
    )

    json_out = tmp_path / "hits.json"
    assert cli([*search, str(good), str(bad), "--skip-corrupt", "--json", str(json_out)]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.splitlines()
    assert warning.startswith(f"warning: skipping unreadable image {bad}: ")
    assert str(good) in captured.out and str(bad) not in captured.out
    assert [hit["query"] for hit in json.loads(json_out.read_text())] == [str(good)]

    # Nothing left to search: an error that still names the file.
    capsys.readouterr()
    assert cli([*search, str(bad), "--skip-corrupt"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith(f"error: the one image could not be read ({bad}: ")
    assert str(bad) in lines[-1] and len(lines) == 2  # the warning, then the error
