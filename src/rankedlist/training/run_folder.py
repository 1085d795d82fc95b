"""The run folder's guards: never overwrite a run by accident, never resume with another recipe.

Training into a ``train.run_dir`` that already holds a run is refused unless the caller asks to
``resume`` it or to ``overwrite`` it (the convention of Hugging Face's ``overwrite_output_dir``):
a forgotten ``--resume`` after a SIGTERM must not truncate ``metrics.jsonl`` and replace
``last.pt``. A resume compares the given config with the checkpoint's: keys that change what is
computed are refused (each with its old and new value), keys that only change how long or how
often things happen are allowed and recorded in ``config_changes.jsonl``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankedlist.training.config import (
    FIXED_ON_RESUME,
    SAFE_ON_RESUME,
    Config,
    config_differences,
    config_from_dict,
)

__all__ = [
    "CHANGES_FILE",
    "RunExistsError",
    "check_resume_config",
    "existing_run_files",
    "record_config_changes",
    "remove_run",
]

#: Where the allowed changes of each resume are recorded, one JSON line per resume.
CHANGES_FILE = "config_changes.jsonl"
# What a run writes into its folder (the report's pictures are named by the report package).
_RUN_FILES = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "metrics.json", "report.md")
_RUN_FOLDERS = ("tensorboard",)


class RunExistsError(ValueError):
    """``train.run_dir`` already holds a run and neither resume nor overwrite was asked for."""


def _run_artifacts() -> tuple[str, ...]:
    from rankedlist.report.write_report import FILE_NAMES

    return tuple(dict.fromkeys((*_RUN_FILES, CHANGES_FILE, *FILE_NAMES.values())))


def existing_run_files(run_dir: str | Path) -> list[str]:
    """The names of a previous run's files and folders inside ``run_dir`` (empty: none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = [n for n in _run_artifacts() if (run_dir / n).is_file()]
    return names + [n for n in _RUN_FOLDERS if (run_dir / n).is_dir()]


def refuse_existing_run(run_dir: str | Path, found: list[str]) -> RunExistsError:
    """The error for a run folder that already holds ``found``."""
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    return RunExistsError(
        f"train.run_dir {run_dir} already holds a run ({shown}); continue it with --resume, "
        "train into another folder with train.run_dir=PATH, or pass --overwrite to delete that "
        "run and start again (in Python: main(config, resume=...) or overwrite=True)"
    )


def remove_run(run_dir: str | Path) -> list[str]:
    """Delete a previous run's files from ``run_dir`` (only what a run writes; anything else the
    user keeps there stays). Returns the removed names."""
    run_dir = Path(run_dir)
    removed = existing_run_files(run_dir)
    for name in removed:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return removed


def check_resume_config(
    saved: Mapping[str, Any], config: Config, checkpoint: str | Path, allow_changes: bool = False
) -> dict[str, tuple[Any, Any]]:
    """The differences between a checkpoint's config and ``config`` that a resume may make.

    Raises ``ValueError`` listing each refused key with its old and new value. With
    ``allow_changes`` every key may change except the model's and the dataset (the saved
    weights would not fit), for deliberate continuations such as a lower learning rate after a
    divergence.
    """
    # Through config_from_dict: a checkpoint of an older version gets today's defaults.
    before = config_from_dict(dict(saved)).to_dict()
    changes = config_differences(before, config.to_dict())
    fixed = [k for k in changes if k.startswith(FIXED_ON_RESUME) or k == "loss.name"]
    refused = [k for k in changes if k not in SAFE_ON_RESUME]
    if fixed or (refused and not allow_changes):
        keys = fixed if allow_changes else refused
        listed = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)
        escape = (
            ""
            if fixed
            else ", or pass --allow-config-change to continue from its weights with the new "
            "values on purpose (recorded in the run folder)"
        )
        raise ValueError(
            f"cannot resume {checkpoint} with a different recipe: {listed}. Resume with the "
            f"checkpoint's values (`rankedlist train --resume {checkpoint}` alone uses its saved "
            f"config){escape}, or start a new run (another train.run_dir, or --overwrite)"
        )
    return changes


def record_config_changes(
    run_dir: str | Path,
    iteration: int,
    checkpoint: str | Path,
    changes: Mapping[str, tuple[Any, Any]],
) -> Path:
    """Append one line to ``config_changes.jsonl``: when, from where, and each key's change."""
    path = Path(run_dir) / CHANGES_FILE
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "iteration": iteration,
        "resumed_from": str(checkpoint),
        "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()},
    }
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return path
