"""``rankedlist convert-checkpoint``: an older checkpoint rewritten as tensors and plain values.

:func:`~rankedlist.training.checkpoint.load_checkpoint` reads checkpoints with
``torch.load(weights_only=True)``. An older rankedlist pickled numpy's RNG state; that file is
still read (through an allow-list of the numpy array types) and converted here without running
anything. A file holding other objects is only ever unpickled in full when the user passes
``trust=True`` (``--trust``): that runs whatever code the file holds, so it is for files the user
wrote. The converted checkpoint is checked to load with ``weights_only=True`` and written
atomically.
"""

from __future__ import annotations

import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from rankedlist.training.checkpoint import (
    UnsafeCheckpointError,
    load_checkpoint,
    not_plain,
    save_checkpoint,
    upgrade_rng_states,
)

__all__ = ["ConvertResult", "convert_checkpoint"]


@dataclass
class ConvertResult:
    """Where the converted checkpoint went and how its source was read."""

    source: Path
    out: Path
    full_unpickle: bool  # True: the source was unpickled in full (--trust)
    refused: list[str]  # the globals weights_only refused in the source (empty: none)


def convert_checkpoint(
    source: str | Path,
    out: str | Path | None = None,
    trust: bool = False,
    warn: Callable[[str], None] | None = None,
) -> ConvertResult:
    """Rewrite checkpoint ``source`` as tensors and plain values to ``out`` (default: in place).

    Args:
        source: the ``.pt`` file.
        out: the file to write; ``None`` replaces ``source`` (atomically).
        trust: when ``source`` holds objects ``weights_only`` refuses (other than an older
            rankedlist's numpy RNG state), unpickle it in full. This runs any code the file
            holds; ``warn`` (default: stderr) is told before it happens. Without ``trust`` such
            a file raises :class:`~rankedlist.training.checkpoint.UnsafeCheckpointError`.
    """
    source = Path(source)
    if source.is_dir():
        raise ValueError(
            f"convert-checkpoint takes a .pt file, not the folder {source}: pass "
            f"{source / 'last.pt'} (and {source / 'best.pt'} if it has one)"
        )
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source} not found; pass the .pt file to convert")
    out = source if out is None else Path(out)
    if out.is_dir():
        raise ValueError(
            f"--out {out} is a folder; pass the file to write, e.g. {out / source.name}"
        )
    try:
        state = load_checkpoint(source)  # weights_only; an older numpy RNG state is converted
    except UnsafeCheckpointError as err:
        if not trust:
            raise
        refused = err.refused
    else:
        return _write(state, source, out, full_unpickle=False, refused=[])
    (warn or _to_stderr)(
        f"warning: unpickling {source} in full because of --trust: this runs any code the file "
        f"holds ({', '.join(refused)}); do this only with a checkpoint you wrote yourself"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        # The one full unpickling in rankedlist, on the user's word (--trust) that the file is
        # theirs.
        state = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{source} is not a rankedlist checkpoint (no 'model' entry)")
    state = _plain(upgrade_rng_states(state, source, strict=False), "state", source)
    return _write(state, source, out, full_unpickle=True, refused=refused)


def _plain(obj: Any, where: str, source: Path) -> Any:
    """``obj`` with numpy values as tensors / Python numbers and paths as strings; any other
    object is refused (it would not load with ``weights_only=True``)."""
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if type(obj) in (dict, OrderedDict):
        return type(obj)(
            (key, _plain(value, f"{where}[{key!r}]", source)) for key, value in obj.items()
        )
    if type(obj) in (list, tuple, set):
        return type(obj)(_plain(value, f"{where}[{i}]", source) for i, value in enumerate(obj))
    problem = not_plain(obj, where)
    if problem is not None:
        raise ValueError(
            f"{source} cannot be converted: {problem}, which a checkpoint of `rankedlist train` "
            "never holds; it was written by other code"
        )
    return obj


def _write(
    state: dict[str, Any], source: Path, out: Path, full_unpickle: bool, refused: list[str]
) -> ConvertResult:
    save_checkpoint(state, out)  # refuses anything torch.load(weights_only=True) would refuse
    return ConvertResult(source, out, full_unpickle, refused)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)
