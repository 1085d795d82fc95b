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

from rankedlist.atomic_write import remove_orphan_temporaries
from rankedlist.training import distributed as dist_utils
from rankedlist.training.config import Config, config_from_dict

__all__ = [
    "CHANGES_FILE",
    "FIXED_ON_RESUME",
    "SAFE_ON_RESUME",
    "config_differences",
    "flatten_config",
    "prepare_run_dir",
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


#: Keys a resumed run may change: they do not change what is computed, only how long, how often
#: it is logged, evaluated or saved, and where it runs. Everything else is refused on resume.
SAFE_ON_RESUME = frozenset(
    {
        "description",
        "data.num_workers",
        "train.iterations",  # extends (or shortens) the run; the schedule follows the new length
        "train.eval_every",
        "train.checkpoint_every",
        "train.log_every",
        "train.device",
        "train.run_dir",
        "train.eval_batch_size",
        "train.num_threads",
        "train.tensorboard",
        "train.report",
    }
)
#: Keys no resume can change, even deliberately: the saved weights would not fit the model.
FIXED_ON_RESUME = ("model.", "data.dataset")


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.01, "loss.params.margin": 0.4, ...}``: one entry per leaf value."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for every leaf that differs (missing leaves are None)."""
    a, b = flatten_config(old), flatten_config(new)
    out = {}
    for key in sorted(set(a) | set(b)):
        pair = (a.get(key), b.get(key))
        # An empty mapping on one side and sub-keys on the other: the sub-keys say it all.
        if pair[0] != pair[1] and not all(v in ({}, None) for v in pair):
            out[key] = pair
    return out


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


def prepare_run_dir(
    config: Config, ctx: dist_utils.DistributedContext, resume: str | Path | None, overwrite: bool
) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder holding another run; drop the temporary
    files a killed checkpoint write left. Rank 0 looks, every rank gets the same answer."""
    run_dir = Path(config.train.run_dir)
    same_folder = resume is not None and _checkpoint_folder(resume) == run_dir.resolve()
    found = existing_run_files(run_dir) if ctx.is_main and not same_folder else []
    found = dist_utils.broadcast_object(found, ctx)
    if found and not overwrite:
        raise refuse_existing_run(run_dir, found)
    if ctx.is_main:
        if found:
            remove_run(run_dir)
            print(f"--overwrite: removed the previous run in {run_dir}", flush=True)
        remove_orphan_temporaries(run_dir)
    dist_utils.barrier(ctx)


def _checkpoint_folder(resume: str | Path) -> Path:
    path = Path(resume)
    return (path if path.is_dir() else path.parent).resolve()
