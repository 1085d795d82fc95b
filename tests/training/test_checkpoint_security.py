"""No checkpoint a user hands us runs code: every reader uses torch.load(weights_only=True).

A malicious ``.pt`` (an object whose ``__reduce__`` runs a shell command) is given to every
command that reads a checkpoint, directly or through an index folder's ``meta.json``: the
command is refused with one ``error:`` line naming the file, and the command never runs. A real
run's checkpoints load with ``weights_only=True`` and no allow-list; one in an older format
(numpy's RNG state pickled) still resumes, and ``convert-checkpoint`` rewrites it.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_run import TINY, train_records  # constants: RUN and ENTRY_POINTS are built at import
from PIL import Image

from rankedlist import atomic_write as atomic_write_module
from rankedlist.cli.main import main as cli
from rankedlist.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
GLYPHS = str(REPO / "configs" / "glyphs.yaml")
RUNTIME = ["--device", "cpu", "--no-progress"]
# 4 iterations with validation (best.pt) and a cross-batch memory in the loss (in last.pt).
RUN = [*TINY, "train.iterations=4", "data.val_fraction=0.2", "train.eval_every=2",
       "loss.memory_size=32", "train.checkpoint_every=2"]  # fmt: skip


class RunsACommand:
    """Unpickling this runs ``command`` in a shell (what an attacker's checkpoint would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def one_error_line(capsys, code: int, path: Path) -> str:
    """Exit status 2 and exactly one line on stderr: ``error: ...`` naming ``path``."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny glyph run stopped at iteration 2 of 4 (last.pt: optimizer, scheduler, scaler, RNG
    states, a cross-batch memory in the loss; best.pt from validation), a folder of images and
    an index built from the run with the CLI."""
    root = tmp_path_factory.mktemp("security")
    folder = root / "run"
    code = cli(["train", "--config", GLYPHS, *RUN, f"train.run_dir={folder}", "--stop-after", "2"])
    assert code == 0
    images = root / "images"
    rng = np.random.default_rng(0)
    for c in range(2):
        (images / f"class_{c}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"class_{c}" / f"img_{i}.png")
    index = root / "index"
    build = ["index", "build", "--checkpoint", str(folder / "best.pt"), "--images", str(images)]
    assert cli([*build, "--out", str(index), *RUNTIME]) == 0
    return folder, images, index


def malicious_copy(source: Path, target: Path, fmt: str = "zip") -> tuple[Path, Path]:
    """``target``: ``source``'s checkpoint plus an object that, unpickled, creates a marker file
    (``torch.save``'s zip format, its legacy format, or a plain pickle). Returns the file and the
    marker."""
    marker = target.parent / f"MARKER_{target.stem}"
    state = load_checkpoint(source)
    state["x"] = RunsACommand(f"touch {shlex.quote(str(marker))}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pickle":
        target.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, target, _use_new_zipfile_serialization=fmt == "zip")
    return target, marker


def test_a_real_runs_checkpoints_load_with_weights_only_and_no_allow_list(run):
    folder, _, _ = run
    for name in ("last.pt", "best.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(folder / name)) == []
    state = torch.load(folder / "last.pt", weights_only=True)  # what every reader does
    assert state["iteration"] == 2 and state["config"]["loss"]["memory_size"] == 32
    assert set(state) >= {"model", "losses", "config", "optimizer", "scheduler", "scaler", "rng"}
    memory = [k for k, v in state["losses"].items() if "memory" in k and v.numel() >= 32]
    assert memory, list(state["losses"])  # the cross-batch memory bank travels as tensors
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 2
    numpy_state = state["rng"][0]["numpy"]
    assert numpy_state["bit_generator"] == "MT19937" and numpy_state["key"].shape == (624,)
    assert state["best"]["iteration"] == 2 and isinstance(state["best"]["value"], float)
    assert torch.load(folder / "best.pt", weights_only=True)["iteration"] == 2


# Every command that reads a checkpoint named on its command line. MAL is the malicious file.
ENTRY_POINTS = {
    "evaluate": ["evaluate", "--checkpoint", "MAL", "--device", "cpu"],
    "export onnx": ["export", "--checkpoint", "MAL", "--out", "OUT/m.onnx"],
    "export torchscript": ["export", "--checkpoint", "MAL", "--out", "OUT/m.pt"],
    "index build": ["index", "build", "--checkpoint", "MAL", "--images", "IMAGES",
                    "--out", "OUT/idx", *RUNTIME],
    "index search": ["index", "search", "--index", "INDEX", "--checkpoint", "MAL", "QUERY",
                     *RUNTIME],
    "train --resume": ["train", "--resume", "MAL"],
    "train --config --resume": ["train", "--config", GLYPHS, *TINY, "train.run_dir=EVIL",
                                "--resume", "MAL"],
}  # fmt: skip


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_malicious_checkpoint_runs_nothing_in_any_command(run, tmp_path, capsys, entry):
    folder, images, index = run
    bad, marker = malicious_copy(folder / "last.pt", tmp_path / "evil" / "last.pt")
    query = next(images.rglob("*.png"))
    fill = {"MAL": str(bad), "IMAGES": str(images), "INDEX": str(index), "QUERY": str(query),
            "train.run_dir=EVIL": f"train.run_dir={bad.parent}"}  # fmt: skip
    out = tmp_path / "out"
    argv = [
        str(out / a[4:]) if a.startswith("OUT/") else fill.get(a, a) for a in ENTRY_POINTS[entry]
    ]
    capsys.readouterr()
    code = cli(argv)
    assert not marker.exists(), "the checkpoint's pickle ran a command"
    line = one_error_line(capsys, code, bad)
    assert "posix.system" in line or "nt.system" in line  # what it would have called
    assert f"rankedlist convert-checkpoint {bad} --trust" in line and "otherwise delete it" in line
    # Nothing written (an index build's lock file aside).
    assert not out.exists() or [p.name for p in out.iterdir() if p.suffix != ".lock"] == []


@pytest.mark.parametrize("fmt", ["legacy", "pickle"])
def test_other_pickle_formats_run_nothing_either(run, tmp_path, capsys, fmt):
    folder, _, _ = run
    bad, marker = malicious_copy(folder / "best.pt", tmp_path / f"{fmt}.pt", fmt)
    capsys.readouterr()
    code = cli(["evaluate", "--checkpoint", str(bad), "--device", "cpu"])
    assert not marker.exists()
    one_error_line(capsys, code, bad)


@pytest.mark.parametrize("action", ["search", "add"])
def test_an_index_whose_recorded_checkpoint_was_replaced_runs_nothing(
    run, tmp_path, capsys, action
):
    # The index records its checkpoint in meta.json; `search` / `add` without --checkpoint load
    # it. Someone swaps that file for a malicious one.
    folder, images, index = run
    copy = tmp_path / "index"
    copy.mkdir()
    for item in index.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    recorded = Path(json.loads((copy / "meta.json").read_text())["checkpoint"])
    assert recorded == (folder / "best.pt").resolve()
    target = tmp_path / "swapped" / "best.pt"
    meta = json.loads((copy / "meta.json").read_text())
    meta["checkpoint"] = str(target)
    (copy / "meta.json").write_text(json.dumps(meta))
    bad, marker = malicious_copy(folder / "best.pt", target)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    if action == "search":
        argv = ["index", "search", "--index", str(copy), str(next(images.rglob("*.png")))]
    else:
        argv = ["index", "add", "--index", str(copy), "--images", str(images)]
    capsys.readouterr()
    code = cli([*argv, *RUNTIME])
    assert not marker.exists()
    one_error_line(capsys, code, bad)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # the index unchanged


# --------------------------------------------------------------------------- older checkpoints


def as_old_format(source: Path, target: Path) -> tuple[Path, tuple]:
    """``source`` as an older rankedlist wrote it: numpy's RNG state pickled as the tuple
    ``np.random.get_state()`` returns (a uint32 array). Returns the file and that state."""
    state = torch.load(source, weights_only=True)
    plain = state["rng"][0]["numpy"]
    legacy = (
        plain["bit_generator"],
        plain["key"].numpy().astype(np.uint32),
        plain["pos"],
        plain["has_gauss"],
        plain["cached_gaussian"],
    )
    state["rng"][0]["numpy"] = legacy
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(target))) >= {
        "numpy.ndarray",
        "numpy.dtype",
    }
    return target, legacy


def assert_numpy_state(plain: dict, legacy: tuple) -> None:
    assert plain["bit_generator"] == legacy[0] and plain["key"].dtype == torch.int64
    assert np.array_equal(plain["key"].numpy().astype(np.uint32), legacy[1])
    assert (plain["pos"], plain["has_gauss"], plain["cached_gaussian"]) == legacy[2:]


@pytest.mark.slow
def test_an_old_format_checkpoint_loads_resumes_and_converts(run, tmp_path, capsys):
    folder, _, _ = run
    old, legacy = as_old_format(folder / "last.pt", tmp_path / "old" / "last.pt")
    # Read through the numpy allow-list, its RNG state converted bit for bit.
    assert_numpy_state(load_checkpoint(old)["rng"][0]["numpy"], legacy)

    new = tmp_path / "converted" / "last.pt"
    capsys.readouterr()
    assert cli(["convert-checkpoint", str(old), "--out", str(new)]) == 0
    captured = capsys.readouterr()
    assert f"converted {old} (read with weights_only=True) -> {new}" in captured.out
    assert captured.err == ""  # nothing was unpickled in full: no warning
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(new)) == []
    converted = torch.load(new, weights_only=True)
    assert_numpy_state(converted["rng"][0]["numpy"], legacy)
    original = torch.load(folder / "last.pt", weights_only=True)
    for key, value in original["model"].items():
        assert torch.equal(converted["model"][key], value), key

    # Both resume, and exactly as the run itself does from its own last.pt.
    runs = {}
    for name, source in (("own", folder / "last.pt"), ("old", old), ("converted", new)):
        run_dir = tmp_path / f"resumed_{name}"
        run_dir.mkdir(exist_ok=True)
        (run_dir / "last.pt").write_bytes(source.read_bytes())
        (run_dir / "best.pt").write_bytes((folder / "best.pt").read_bytes())  # best so far
        assert cli(["train", "--config", GLYPHS, *RUN, f"train.run_dir={run_dir}", "--resume"]) == 0
        runs[name] = [r["loss"] for r in train_records(run_dir) if r["step"] > 2]
    assert len(runs["own"]) == 2
    assert runs["old"] == runs["own"] and runs["converted"] == runs["own"]


def test_without_safe_globals_an_old_checkpoint_is_one_line_and_convert_needs_trust(
    run, tmp_path, capsys, monkeypatch
):
    # A torch older than 2.5 has no torch.serialization.safe_globals: the numpy RNG state of an
    # older checkpoint cannot be allow-listed, so the file is refused and the way is named.
    folder, _, _ = run
    old, legacy = as_old_format(folder / "last.pt", tmp_path / "old.pt")
    monkeypatch.delattr(torch.serialization, "safe_globals")
    capsys.readouterr()
    line = one_error_line(capsys, cli(["train", "--resume", str(old)]), old)
    assert "older rankedlist format" in line
    assert f"rankedlist convert-checkpoint {old} --trust" in line

    line = one_error_line(capsys, cli(["convert-checkpoint", str(old)]), old)
    assert "--trust" in line
    assert cli(["convert-checkpoint", str(old), "--trust"]) == 0  # our own file: in place
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: unpickling {old} in full")
    assert_numpy_state(torch.load(old, weights_only=True)["rng"][0]["numpy"], legacy)


def test_convert_on_a_full_disk_keeps_the_old_file_and_is_one_line(
    run, tmp_path, capsys, monkeypatch
):
    folder, _, _ = run
    old, _ = as_old_format(folder / "last.pt", tmp_path / "old.pt")
    before = old.read_bytes()
    real = atomic_write_module._TemporaryFile._write

    def full(self, data):  # room for the zip header only: the zip writer's RuntimeError path
        self._test_written = getattr(self, "_test_written", 0) + memoryview(data).nbytes
        if self._test_written > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(atomic_write_module._TemporaryFile, "_write", full)
    capsys.readouterr()
    line = one_error_line(capsys, cli(["convert-checkpoint", str(old)]), old)
    assert line.startswith(f"error: no space left on device while writing {old}; free some")
    assert old.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]
