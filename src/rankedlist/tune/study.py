"""The Optuna side of ``rankedlist tune``: storage, study, sampler, pruner, claiming trials.

Storage: a path (the default ``<out>/study.journal``) is Optuna's ``JournalStorage`` with a file
backend (no server; its lock makes concurrent processes safe, on a shared file system too); a
URL with ``://`` (``sqlite:///x.db``, ``postgresql://...``, ``mysql+pymysql://...``) is an
Optuna RDB storage.

Exactly ``--trials N``, however many workers: a worker *claims* a trial by asking for one only
while fewer than N trials are complete, pruned or running. With a journal file the count and the
ask happen under a lock of their own (``<journal>.claim.lock``), so two workers cannot both take
the last slot. With a database the trial's rank (by creation) among those trials decides: a
trial ranked N or later is told FAIL at once, marked ``surplus``, and never trains. Failed
trials (an interrupt, a crash) do not count, so the same command again re-runs them; a
``RUNNING`` trial whose worker process on this machine is gone is marked failed first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rankedlist.extras import require

__all__ = [
    "ATTR",
    "WORKER",
    "claim_trial",
    "counted_trials",
    "make_pruner",
    "make_sampler",
    "open_study",
]

#: The study attribute that records what a study searches (the recipe, the space, the metric).
ATTR = "rankedlist_tune"
#: This process, as recorded on the trials it runs.
WORKER = f"{socket.gethostname()}:{os.getpid()}"
PRUNERS = ("median", "halving", "none")


def optuna_module():
    mod = require("optuna", "tune", "hyper-parameter search (rankedlist tune)")
    mod.logging.set_verbosity(mod.logging.WARNING)
    warnings.filterwarnings("ignore", category=mod.exceptions.ExperimentalWarning)
    return mod


def open_storage(storage: str | None, out: Path) -> tuple[Any, str, Any]:
    """(the Optuna storage, how to name it, the claim lock or None for a database)."""
    optuna = optuna_module()
    if storage and "://" in storage and not storage.startswith("file://"):
        return storage, storage, None
    path = Path(storage.removeprefix("file://")) if storage else out / "study.journal"
    if path.is_dir():
        raise ValueError(
            f"--storage {path} is a folder; give a journal file path (e.g. {path}/study.journal) "
            "or a database URL (sqlite:///study.db)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    journal = optuna.storages.journal
    backend = journal.JournalFileBackend(str(path))
    lock = journal.JournalFileSymlinkLock(str(path) + ".claim")
    return optuna.storages.JournalStorage(backend), str(path), lock


def make_sampler(seed: int, n_trials: int, index: int) -> Any:
    """TPE seeded by ``seed`` and the trial's index in the study (reproducible with one worker,
    different across workers); a constant liar keeps concurrent workers apart."""
    optuna = optuna_module()
    startup = min(10, max(3, n_trials // 4))
    return optuna.samplers.TPESampler(
        seed=seed * 100_003 + index,
        n_startup_trials=startup,
        multivariate=True,
        constant_liar=True,
    )


def make_pruner(name: str, n_trials: int, eval_every: int) -> Any:
    """``median``: stop a trial whose validation value is below the median of the finished
    trials at the same iteration, from the second validation on, once a few trials finished;
    ``halving``: asynchronous successive halving with rungs from the first validation on."""
    optuna = optuna_module()
    if name == "median":
        startup = min(5, max(2, n_trials // 5))
        return optuna.pruners.MedianPruner(
            n_startup_trials=startup, n_warmup_steps=2 * eval_every, interval_steps=1
        )
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=eval_every, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner {name!r} is unknown; choose one of {', '.join(PRUNERS)}")


def open_study(
    name: str, storage: Any, described: dict[str, Any], sampler: Any, pruner: Any, lock: Any
) -> Any:
    """Create or join the study; refuse to join one that searches something else."""
    optuna = optuna_module()
    with _locked(lock):
        study = optuna.create_study(
            study_name=name, storage=storage, direction="maximize", load_if_exists=True,
            sampler=sampler, pruner=pruner,
        )  # fmt: skip
        recorded = study.user_attrs.get(ATTR)
        if recorded is None:
            study.set_user_attr(ATTR, described)
        elif recorded != described:
            key = _first_difference(recorded, described)
            raise ValueError(
                f"study {name!r} in this storage searches something else ({key} differs: "
                f"{_at(recorded, key)!r} there, {_at(described, key)!r} here); use the same "
                "recipe, overrides, --space and --metric, or choose another --study name"
            )
    return study


def counted_trials(study: Any) -> list[Any]:
    """The trials that count toward N: complete, pruned or running (not failed or waiting)."""
    state = optuna_module().trial.TrialState
    counted = (state.COMPLETE, state.PRUNED, state.RUNNING)
    return [t for t in study.get_trials(deepcopy=False) if t.state in counted]


def claim_trial(study: Any, n_trials: int, lock: Any, seed: int) -> Any | None:
    """A new trial (``optuna.Trial``) if the study has fewer than ``n_trials``, else None."""
    optuna = optuna_module()
    with _locked(lock):
        fail_stale_trials(study)
        if len(counted_trials(study)) >= n_trials:
            return None
        index = len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(seed, n_trials, index)
        trial = study.ask()
        trial.set_user_attr("worker", WORKER)
    if lock is None:  # a database: the rank decides (see the module docstring)
        ids = sorted(t._trial_id for t in counted_trials(study))
        if trial._trial_id in ids and ids.index(trial._trial_id) >= n_trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
    return trial


def fail_stale_trials(study: Any) -> list[int]:
    """Mark failed the running trials whose worker is a dead process of this machine."""
    state = optuna_module().trial.TrialState
    host = socket.gethostname()
    stale = []
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(t._trial_id, "failed_because", "worker gone")
            study.tell(t.number, state=state.FAIL, skip_if_finished=True)
            stale.append(t.number)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(lock: Any) -> Iterator[None]:
    if lock is None:
        yield
        return
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the search"


def _at(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data
