"""A resume's recipe check: which config keys a resumed run may change, and the record of them.

A resume compares the given config with the checkpoint's: keys that change what is computed are
refused (each with its old and new value), keys that only change how long or how often things
happen are allowed and recorded in ``config_changes.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankedlist.training.config import config_from_dict
from rankedlist.training.config_schema import Config
from rankedlist.training.run_folder import CHANGES_FILE

__all__ = [
    "FIXED_ON_RESUME",
    "MACHINE_LOCAL_KEYS",
    "SAFE_ON_RESUME",
    "check_resume_config",
    "config_differences",
    "flatten_config",
    "record_config_changes",
]

#: Keys that say where and with what a run happens (and its one-line label), not what it
#: computes: a run on another machine may set them differently. A resume may change them, and a
#: tuning study leaves them out of the recipe that workers joining it must share.
MACHINE_LOCAL_KEYS = frozenset(
    {
        "description",
        "data.num_workers",
        "train.device",
        "train.run_dir",
        "train.num_threads",
    }
)
#: Keys a resumed run may change: they do not change what is computed, only how long, how often
#: it is logged, evaluated or saved, and where it runs. Everything else is refused on resume.
SAFE_ON_RESUME = MACHINE_LOCAL_KEYS | {
    "train.iterations",  # extends (or shortens) the run; the schedule follows the new length
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.eval_batch_size",
    "train.tensorboard",
    "train.report",
}
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
