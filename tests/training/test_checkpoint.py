"""Atomic checkpoints (a full disk mid-write included) and RNG state capture."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _full_disk import fill, small_tmpfs

from rankedlist import atomic_write as atomic_write_module
from rankedlist.cli.errors import describe_error
from rankedlist.training import checkpoint as ckpt


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "iteration": 3, "config": {"a": {"b": 1}}}
    path = ckpt.save_checkpoint(state, tmp_path / "sub" / "last.pt")
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["iteration"] == 3 and loaded["config"] == {"a": {"b": 1}}
    assert ckpt.load_checkpoint(tmp_path / "sub")["iteration"] == 3  # a run folder means last.pt


def test_crash_mid_write_keeps_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"model": {}, "iteration": 1}, path)
    before = path.read_bytes()

    def exploding_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # some bytes reach the temporary file first
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint({"model": {}, "iteration": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["iteration"] == 1


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a rankedlist checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_rng_state_restores_every_generator():
    state = ckpt.capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    ckpt.restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first


def test_rng_state_is_plain_and_restores_bit_exactly_from_a_weights_only_file(tmp_path):
    # Mid-stream states: numpy holds a cached gaussian (has_gauss=1), python a gauss_next.
    random.seed(3)
    np.random.seed(5)
    random.gauss(0, 1)
    np.random.standard_normal()
    want_python, want_numpy = random.getstate(), np.random.get_state()
    assert want_python[2] is not None and want_numpy[3] == 1
    path = ckpt.save_checkpoint({"model": {}, "rng": [ckpt.capture_rng_state()]}, tmp_path / "r.pt")
    first = (random.random(), np.random.standard_normal(5).tolist(), float(torch.rand(())))

    loaded = torch.load(path, weights_only=True)  # no allow-list: tensors and plain values only
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.restore_rng_state(loaded["rng"][0])
    assert random.getstate() == want_python
    got = np.random.get_state()
    assert got[0] == want_numpy[0] and np.array_equal(got[1], want_numpy[1])
    assert got[1].dtype == np.uint32 and got[2:] == want_numpy[2:]
    assert (random.random(), np.random.standard_normal(5).tolist(), float(torch.rand(()))) == first


def test_a_checkpoint_of_anything_but_tensors_and_plain_values_is_not_written(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(TypeError, match=r"state\['best'\]\['value'\] is a numpy.float64"):
        ckpt.save_checkpoint({"model": {}, "best": {"value": np.float64(0.5)}}, path)
    with pytest.raises(TypeError, match=r"state\['x'\] is a pathlib\.\w*Path"):
        ckpt.save_checkpoint({"model": {}, "x": Path("a")}, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a full disk


def _disk_with_room_for(monkeypatch, room: int) -> None:
    """Every atomic write fails with ENOSPC once ``room`` bytes of its temporary file are
    written (the disk fills up mid-write), as the raw write() of a full disk does."""
    real = atomic_write_module._TemporaryFile._write

    def write(self, data):
        size = memoryview(data).nbytes
        written = getattr(self, "_test_written", 0)
        if written + size > room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._test_written = written + size
        return real(self, data)

    monkeypatch.setattr(atomic_write_module._TemporaryFile, "_write", write)


@pytest.mark.parametrize("room", [0, 40, 3_000, 70_000, 150_000, -100, -1])
def test_a_disk_that_fills_up_mid_checkpoint_is_one_oserror_naming_the_file(
    tmp_path, monkeypatch, room
):
    # Depending on where the write fails, torch.save's zip writer raises the OSError itself or
    # turns it into "RuntimeError: [enforce fail at inline_container.cc] unexpected pos" (which
    # ended in an 80-line traceback); either way the user reads the errno and the file.
    path = tmp_path / "run" / "last.pt"
    ckpt.save_checkpoint({"model": {"w": torch.arange(50_000.0)}, "iteration": 1}, path)
    before = path.read_bytes()
    room = room if room >= 0 else len(before) + room  # negative: that many bytes short
    _disk_with_room_for(monkeypatch, room)
    with pytest.raises(OSError) as caught:
        ckpt.save_checkpoint({"model": {"w": torch.arange(50_000.0) + 1}, "iteration": 2}, path)
    err = caught.value
    assert err.errno == errno.ENOSPC and err.filename == str(path)
    if 3_000 <= room <= 150_000:  # inside the zip writer's records: the RuntimeError path
        assert isinstance(err.__cause__, RuntimeError) and "unexpected pos" in str(err.__cause__)
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file
    message, code = describe_error(err, "train")
    assert code == 2 and "\n" not in message
    assert message.startswith(f"no space left on device while writing {path}; free some space")
    assert "--resume" in message
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["iteration"] == 1


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (errno.ENOSPC, "no space left on device while writing", "free some space"),
        (errno.EDQUOT, "disk quota exceeded while writing", "free some space"),
        (errno.EROFS, "read-only file system while writing", "choose a writable folder"),
        (errno.EACCES, "permission denied on", "choose a writable folder"),
        (errno.EPERM, "operation not permitted on", "choose a writable folder"),
    ],
)
def test_each_disk_error_gets_its_own_fix(code, reason, fix):
    message, exit_code = describe_error(
        OSError(code, os.strerror(code), "/runs/a/last.pt"), "train"
    )
    assert exit_code == 2 and message.startswith(f"{reason} /runs/a/last.pt; {fix}")
    other = "choose a writable folder" if fix == "free some space" else "free some space"
    assert other not in message  # a read-only disk is not helped by freeing space, and back


@pytest.mark.parametrize("leave", [0, 8_192, 300_000])
def test_a_real_full_disk_mid_checkpoint_is_one_oserror_naming_the_file(tmp_path, leave):
    # A small tmpfs (root only, else skipped): with a few KB left, torch.save's zip writer used
    # to end in "RuntimeError: ... unexpected pos" with no errno and no file name.
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        path = disk / "last.pt"
        ckpt.save_checkpoint({"model": {"w": torch.zeros(100_000)}, "iteration": 1}, path)
        before = path.read_bytes()
        fill(disk, leave)
        with pytest.raises(OSError) as caught:
            ckpt.save_checkpoint({"model": {"w": torch.ones(200_000)}, "iteration": 2}, path)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "last.pt"]
        message, code = describe_error(caught.value, "train")
        assert code == 2 and message.startswith(f"no space left on device while writing {path}")
