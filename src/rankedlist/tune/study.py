"""The Optuna side of ``rankedlist tune``: storage, study, sampler, pruner, claiming trials.

Storage: a path (the default ``<out>/study.journal``) is Optuna's ``JournalStorage`` with a file
backend (no server; its lock makes concurrent processes safe, on a shared file system too); a
URL with ``://`` (``sqlite:///x.db``, ``postgresql+psycopg2://USER@HOST:5432/DB``,
``mysql+pymysql://...``) is an Optuna RDB storage, connected to when the command starts: an
unreachable server, an unknown dialect or a missing driver is a ``ValueError`` (one ``error:``
line) before anything runs. Workers that start together on a fresh PostgreSQL database create its
tables one at a time (an advisory lock); the password of a URL is never printed.

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
import time
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
    "held",
    "make_pruner",
    "make_sampler",
    "open_study",
]

#: The study attribute that records what a study searches (the recipe, the space, the metric).
ATTR = "rankedlist_tune"
#: This process, as recorded on the trials it runs.
WORKER = f"{socket.gethostname()}:{os.getpid()}"
PRUNERS = ("median", "halving", "none")
#: Seconds to wait for a database server to answer before ``--storage`` is an error.
CONNECT_TIMEOUT = 10
#: The PostgreSQL advisory lock key under which workers create Optuna's tables one at a time.
_SCHEMA_LOCK_KEY = 0x52_4C_54_55  # "RLTU"


def optuna_module():
    mod = require("optuna", "tune", "hyper-parameter search (rankedlist tune)")
    mod.logging.set_verbosity(mod.logging.WARNING)
    warnings.filterwarnings("ignore", category=mod.exceptions.ExperimentalWarning)
    return mod


def open_storage(storage: str | None, out: Path) -> tuple[Any, str, Any]:
    """(the Optuna storage, how to name it, the claim lock or None for a database)."""
    optuna = optuna_module()
    if storage and "://" in storage and not storage.startswith("file://"):
        return open_database(storage)
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


def open_database(url: str) -> tuple[Any, str, None]:
    """(Optuna's ``RDBStorage`` of ``url``, the URL without its password, None).

    Raises:
        ValueError: not a URL SQLAlchemy reads, an unknown dialect, a missing driver, or a
            database that cannot be opened (the server's reason, and what to check).
    """
    optuna = optuna_module()
    import sqlalchemy
    from sqlalchemy import exc as sa_exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ValueError(
            f"--storage {url!r} is not a database URL ({_one_line(exc)}); give one such as "
            "sqlite:///study.db or postgresql+psycopg2://USER@HOST:5432/DB, or a journal file path"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    if backend in ("postgresql", "mysql") and "connect_timeout" not in parsed.query:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(4):
        try:
            with _schema_lock(parsed, engine_kwargs):
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            return storage, shown, None
        except sa_exc.NoSuchModuleError as exc:
            hint = (
                "postgres:// is not a SQLAlchemy dialect: write postgresql+psycopg2://"
                if parsed.get_backend_name() == "postgres"
                else "use sqlite:///PATH, postgresql+psycopg2://... or mysql+pymysql://..."
            )
            raise ValueError(
                f"--storage {shown}: unknown database dialect or driver {parsed.drivername!r} "
                f"({_one_line(exc)}); {hint}"
            ) from None
        except ImportError as exc:
            raise ValueError(
                f"--storage {shown}: the database driver of {parsed.drivername!r} is not "
                f"installed ({_one_line(exc.__cause__ or exc)}); pip install 'rankedlist[tune]' "
                "brings psycopg2 for postgresql://, mysql+pymysql:// needs pip install pymysql"
            ) from None
        except sa_exc.SQLAlchemyError as exc:
            reason = _one_line(getattr(exc, "orig", None) or exc)
            if attempt < 3 and ("already exists" in reason or "duplicate key" in reason):
                time.sleep(0.5 * (attempt + 1))  # another worker created the tables meanwhile
                continue
            raise ValueError(
                f"--storage {shown}: cannot open the database ({reason[:300]}); start the "
                "server, check the host, port, user, password and database name, or use a "
                "journal file path (no server)"
            ) from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _schema_lock(url: Any, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """On PostgreSQL, a session advisory lock while Optuna creates its tables: workers that start
    together on a fresh database would otherwise race on ``CREATE TABLE`` (a duplicate key in
    ``pg_type``). Elsewhere nothing (SQLite and MySQL errors are retried by the caller)."""
    if url.get_backend_name() != "postgresql":
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, **engine_kwargs)
    try:
        with engine.connect() as connection:
            key = {"key": _SCHEMA_LOCK_KEY}
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            connection.commit()
            try:
                yield
            finally:  # (closing the connection releases it too)
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
                    connection.commit()
    finally:
        engine.dispose()


def _one_line(exc: Any) -> str:
    text = " ".join(str(exc).split())
    return text.split(" (Background on this error")[0].split(" [SQL:")[0]


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
    with held(lock):
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
    with held(lock):
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
def held(lock: Any) -> Iterator[None]:
    """Hold ``lock`` (an Optuna file lock, or None for a database storage) for the block."""
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
