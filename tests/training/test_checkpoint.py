"""Atomic checkpoints and RNG state capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

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
