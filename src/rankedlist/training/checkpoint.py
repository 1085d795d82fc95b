"""Atomic checkpoints, read without running code, and the RNG state a bit-exact resume needs.

A checkpoint is a plain dict of tensors and plain values (dicts, lists, tuples, strings, numbers,
``None``) saved with ``torch.save``. It is written to a temporary file in the same folder, flushed
and fsynced, then moved over the target with ``os.replace`` (atomic on POSIX and Windows): a crash
or a full disk mid-write leaves the previous checkpoint intact and no partial file behind.

It is read with ``torch.load(..., weights_only=True)``, so a file that holds anything else (an
object whose unpickling calls a function, e.g. a shell command) is refused, never run. A checkpoint
of an older rankedlist, which pickled numpy's RNG state as an array, is read through an allow-list
of exactly the numpy types that array needs (``numpy.ndarray``, ``numpy.dtype`` and its uint32
class, the array constructor ``_reconstruct``) and its RNG state converted; ``rankedlist
convert-checkpoint`` rewrites such a file in the current format.
"""

from __future__ import annotations

import math
import pickle
import random
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankedlist.atomic_write import atomic_write

__all__ = [
    "EXPLODED",
    "CheckpointError",
    "UnsafeCheckpointError",
    "capture_rng_state",
    "checkpoint_health",
    "load_checkpoint",
    "not_plain",
    "restore_rng_state",
    "save_checkpoint",
]

#: Parameters beyond this magnitude count as exploded: no checkpoint is written with them.
EXPLODED = 1e12


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically; return the path.

    ``state`` must hold tensors and plain values only (what :func:`load_checkpoint` reads back);
    anything else raises ``TypeError`` and writes nothing.
    """
    problem = not_plain(state)
    if problem is not None:
        raise TypeError(
            f"checkpoint {path} not written: {problem}; a checkpoint holds tensors and plain "
            "values only (it is read with torch.load(weights_only=True))"
        )
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, without running code.

    A run folder is accepted too and means its ``last.pt``. Raises :class:`CheckpointError` for a
    damaged file and :class:`UnsafeCheckpointError` for one that holds objects other than tensors
    and plain values (each message names the file and the way on).
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
        state = _torch_load(path, map_location)
    except MemoryError:
        raise
    except Exception as err:  # torch.load raises many types for a damaged zip/pickle
        refused = refused_globals(path, err)
        if not refused:
            raise CheckpointError(
                f"checkpoint {path} cannot be read (truncated or not a checkpoint: "
                f"{_reason(err)}); {_CORRUPT_FIX}"
            ) from err
        state = _load_legacy(path, map_location, refused, err)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a rankedlist checkpoint (no 'model' entry)")
    return state


_CORRUPT_FIX = (
    "use another checkpoint of the run (best.pt, or an earlier copy) or train again into a new "
    "train.run_dir (or with --overwrite)"
)


class CheckpointError(ValueError):
    """A checkpoint file exists but is empty, truncated or not a rankedlist checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects that only a full (code-running) unpickling could rebuild.

    ``refused`` names their globals (``"posix.system"``, ``"numpy.ndarray"``).
    """

    def __init__(self, path: Path, refused: set[str], legacy: bool = False) -> None:
        self.path, self.refused, self.legacy = path, sorted(refused), legacy
        names = ", ".join(self.refused[:4]) + (", ..." if len(self.refused) > 4 else "")
        if legacy:  # an older rankedlist's numpy RNG state, and a torch without safe_globals
            message = (
                f"checkpoint {path} is in an older rankedlist format (numpy's RNG state pickled: "
                f"{names}) that torch {torch.__version__} cannot read without running its "
                "pickle; upgrade torch to 2.6 or later (which reads it safely) or, if it is "
                f"your own run's file, convert it once with `rankedlist convert-checkpoint {path} "
                "--trust`"
            )
        else:
            message = (
                f"checkpoint {path} holds objects that only a full unpickling could rebuild "
                f"({names}), which can run code: it was not loaded (checkpoints are read with "
                "torch.load(weights_only=True)). `rankedlist train` never writes such objects; "
                "if you made this file yourself and trust it, rewrite it once with "
                f"`rankedlist convert-checkpoint {path} --trust`, otherwise delete it"
            )
        super().__init__(message)


def _torch_load(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)``, quiet about a pickle protocol it may not support (it
    says so in an error if it does not)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location=map_location, weights_only=True)


def refused_globals(path: Path, err: BaseException) -> set[str]:
    """The globals (``module.name``) of ``path`` that ``torch.load(weights_only=True)`` refuses,
    as read from the pickle without running it; empty for a file that is merely damaged."""
    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) and "Weights only load failed" not in text:
        return set()
    found = set(re.findall(r"GLOBAL ([\w.]+)", text))  # torch names the first one it refused
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is not None:  # torch >= 2.5, zip checkpoints: every one of them
        try:
            found.update(lister(str(path)))
        except Exception:  # a legacy (non-zip) file or a damaged one: what the message says
            pass
    return found


def _reason(err: BaseException) -> str:
    """The line of a torch.load error that says what is wrong (not its boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Weights only load failed", "Check the documentation", "Please file")):
            continue
        return line.removeprefix("WeightsUnpickler error:").strip() or type(err).__name__
    return type(err).__name__


# --------------------------------------------------------------------------- older checkpoints

#: What pickling ``np.random.get_state()`` (a uint32 array) adds to a checkpoint.
_LEGACY_GLOBALS = frozenset(
    {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",  # written under numpy 1.x
        "numpy._core.multiarray._reconstruct",  # written under numpy 2.x
    }
)
_MT19937_WORDS = 624


def _legacy_allow_list() -> list[Any]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's array constructor, under either name
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # the class of the uint32 dtype, whose state is restored
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]


def _load_legacy(
    path: Path, map_location: Any, refused: set[str], err: BaseException
) -> dict[str, Any]:
    """An older checkpoint whose only non-plain objects are numpy RNG states, read through the
    numpy allow-list (still ``weights_only``) with its RNG states converted."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if not refused <= _LEGACY_GLOBALS:
        raise UnsafeCheckpointError(path, refused) from err
    if scoped is None:  # torch < 2.5
        raise UnsafeCheckpointError(path, refused, legacy=True) from err
    try:
        with scoped(_legacy_allow_list()):
            state = _torch_load(path, map_location)
    except MemoryError:
        raise
    except Exception as second:  # more than the numpy arrays, or a torch without (obj, name)
        refused = refused | refused_globals(path, second)
        raise UnsafeCheckpointError(path, refused, legacy=refused <= _LEGACY_GLOBALS) from second
    return upgrade_rng_states(state, path)


def upgrade_rng_states(state: Any, path: Path, strict: bool = True) -> Any:
    """``state`` with each numpy RNG state of an older checkpoint (a tuple holding a uint32 array,
    under ``state["rng"][rank]["numpy"]``) in the current plain format. ``strict``: any other
    object than tensors and plain values left raises :class:`UnsafeCheckpointError`."""
    if isinstance(state, dict) and isinstance(state.get("rng"), list):
        ranks = []
        for entry in state["rng"]:
            if isinstance(entry, dict) and _is_legacy_numpy_state(entry.get("numpy")):
                entry = {**entry, "numpy": _numpy_state_to_plain(entry["numpy"])}
            ranks.append(entry)
        state = {**state, "rng": ranks}
    found = _first_not_plain(state, "state") if strict else None
    if found is not None:  # numpy data elsewhere: not the format rankedlist wrote
        raise UnsafeCheckpointError(path, {found[1]})
    return state


def _is_legacy_numpy_state(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 5
        and isinstance(value[1], np.ndarray)
        and value[1].dtype == np.uint32
        and value[1].shape == (_MT19937_WORDS,)
    )


# --------------------------------------------------------------------------- plain values

_PLAIN_LEAVES = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device)
_TENSORS = (torch.Tensor, torch.nn.Parameter)


def not_plain(obj: Any, where: str = "state") -> str | None:
    """``None`` when ``obj`` is made of tensors and plain values only (what
    ``torch.load(weights_only=True)`` reads without an allow-list), else where the first other
    object sits and its type (``"state['best']['value'] is a numpy.float64"``)."""
    found = _first_not_plain(obj, where)
    return None if found is None else f"{found[0]} is a {found[1]}"


def _first_not_plain(obj: Any, where: str) -> tuple[str, str] | None:
    kind = type(obj)
    if kind in _TENSORS or kind in _PLAIN_LEAVES:
        return None
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in _PLAIN_LEAVES:
                return f"a key of {where}", _type_name(key)
            found = _first_not_plain(value, f"{where}[{key!r}]")
            if found is not None:
                return found
        return None
    if kind in (list, tuple, set, torch.Size):
        for i, value in enumerate(obj):
            found = _first_not_plain(value, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return where, _type_name(obj)


def _type_name(obj: Any) -> str:
    kind = type(obj)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


# --------------------------------------------------------------------------- health


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


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """The state of every generator a training step may draw from, as tensors and plain values.

    Python's is ``random.getstate()`` (a tuple of ints) as it is; numpy's legacy generator state
    is stored by its parts, the 624 key words as an int64 tensor.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state(legacy=True)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (or an older checkpoint's pickled form)."""
    python = state["python"]
    random.setstate((int(python[0]), tuple(int(v) for v in python[1]), python[2]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, Mapping):
        numpy_state = (
            numpy_state["bit_generator"],
            numpy_state["key"].cpu().numpy().astype(np.uint32),
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # a different GPU count: keep the current device's stream at least
            torch.cuda.set_rng_state(cuda_states[0])


def _numpy_state_to_plain(legacy: tuple) -> dict[str, Any]:
    """``np.random.get_state()`` (``("MT19937", uint32 key, pos, has_gauss, cached_gaussian)``)
    as tensors and plain values; :func:`restore_rng_state` turns it back, bit for bit."""
    name, key, pos, has_gauss, cached_gaussian = legacy
    return {
        "bit_generator": str(name),
        "key": torch.from_numpy(np.asarray(key, dtype=np.uint32).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
