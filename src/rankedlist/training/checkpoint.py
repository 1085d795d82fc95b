"""Atomic checkpoints and the random-number-generator state a bit-exact resume needs.

A checkpoint is a plain dict saved with ``torch.save``. It is written to a temporary file in the
same folder, flushed and fsynced, then moved over the target with ``os.replace`` (atomic on POSIX
and Windows): a crash or a full disk mid-write leaves the previous checkpoint intact and no partial
file behind.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankedlist.atomic_write import atomic_write

__all__ = [
    "EXPLODED",
    "CheckpointError",
    "capture_rng_state",
    "checkpoint_health",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

#: Parameters beyond this magnitude count as exploded: no checkpoint is written with them.
EXPLODED = 1e12


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
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {_CORRUPT_FIX}")
    try:
        # weights_only=False: the checkpoint holds numpy/python RNG states and the config dict,
        # and is only ever read from a run folder the user wrote.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except MemoryError:
        raise
    except Exception as err:  # torch.load raises many types for a damaged zip/pickle
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or not a checkpoint: {reason}); "
            f"{_CORRUPT_FIX}"
        ) from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a rankedlist checkpoint (no 'model' entry)")
    return state


_CORRUPT_FIX = (
    "use another checkpoint of the run (best.pt, or an earlier copy) or train again into a new "
    "train.run_dir (or with --overwrite)"
)


class CheckpointError(ValueError):
    """A checkpoint file exists but is empty, truncated or not a rankedlist checkpoint."""


def checkpoint_health(state_tensors: Any, limit: float = EXPLODED) -> str | None:
    """``None`` when every floating tensor in ``state_tensors`` is finite with ``|x| <= limit``,
    else a short description of the first offender (``"model.fc.weight: max |x| = 5e+28"``).

    ``state_tensors`` is any nesting of dicts, lists and tensors (a ``state_dict``, an
    optimizer's state). Exploded weights are refused like non-finite ones: a checkpoint holding
    them diverges again at once when resumed.
    """
    for name, tensor in _floating_tensors(state_tensors, ""):
        if tensor.numel() == 0:
            continue
        peak = float(tensor.detach().abs().max())
        if not math.isfinite(peak) or peak > limit:
            return f"{name}: max |x| = {peak:.3g}"
    return None


def _floating_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix or "tensor", obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _floating_tensors(value, f"{prefix}[{i}]")


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
