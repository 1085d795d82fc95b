"""Atomic checkpoints and the random-number-generator state a bit-exact resume needs.

A checkpoint is a plain dict saved with ``torch.save``. It is written to a temporary file in the
same folder, flushed and fsynced, then moved over the target with ``os.replace`` (atomic on POSIX
and Windows): a crash or a full disk mid-write leaves the previous checkpoint intact and no partial
file behind.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankedlist.atomic_write import atomic_write

__all__ = [
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically; return the path."""
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    A run folder is accepted too and means its ``last.pt``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; pass a .pt file or a run folder that holds last.pt"
        )
    # weights_only=False: the checkpoint holds numpy/python RNG states and the config dict,
    # and is only ever read from a run folder the user wrote.
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a rankedlist checkpoint (no 'model' entry)")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The state of every generator a training step may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # a different GPU count: keep the current device's stream at least
            torch.cuda.set_rng_state(cuda_states[0])
