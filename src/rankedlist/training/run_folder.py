"""The run folder: what a run owns there, who may write it, and what is deleted or copied when.

Four rules a user can predict:

- **One writer per folder.** A run holds the folder's lock (:mod:`rankedlist.folder_lock`) from
  its start to the end of its final test; a second ``train`` (or ``--overwrite``) there gets one
  line naming the process that holds it. The lock dies with its process, ``kill -9`` included.
- **A run owns exactly the files it lists.** Every run writes ``run_files.json``, the names of
  the files it writes; ``--overwrite`` removes those and nothing else. A folder's other files
  (a user's own ``config.yaml``, ``tensorboard/other_experiment/``) are never deleted, and a run
  refuses to start where it would write over one of them.
- **A run worth protecting has a checkpoint.** A folder whose files list no ``last.pt`` or
  ``best.pt`` (a start that failed on its first batch) is cleared by the next start, without
  ``--overwrite``.
- **A resume continues where its checkpoint is.** Resuming into another ``train.run_dir`` first
  copies the whole run there (checkpoints, history, the lists), then continues in the copy; the
  original stays as it was.

Nothing is deleted or copied until everything has been checked: the caller inspects
(:meth:`RunFolder.claim`: the lock, the refusals), validates the config, the checkpoint and the
data, and only then calls :meth:`RunFolder.make_ready`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rankedlist.atomic_write import atomic_write, atomic_write_text, remove_orphan_temporaries
from rankedlist.folder_lock import FolderBusyError, FolderLock
from rankedlist.training import distributed as dist_utils

__all__ = [
    "CHANGES_FILE",
    "MANIFEST",
    "SKIPPED_FILE",
    "FolderState",
    "RunExistsError",
    "RunFolder",
    "checkpoint_folder",
    "inspect_run_folder",
    "register_run_files",
    "remove_run",
]

#: The list of the files a run wrote (relative POSIX paths), rewritten atomically as it grows.
MANIFEST = "run_files.json"
#: Where the allowed changes of each resume are recorded, one JSON line per resume.
CHANGES_FILE = "config_changes.jsonl"
#: The images a run skipped as unreadable (``data.options.skip_corrupt=true``).
SKIPPED_FILE = "skipped_images.txt"
_CHECKPOINTS = ("last.pt", "best.pt")
_TENSORBOARD = "tensorboard"
_EVENTS_GLOB = "events.out.tfevents.*"


def run_file_names() -> tuple[str, ...]:
    """The top-level files a run may write (the report's pictures are named by the report)."""
    from rankedlist.report.write_report import FILE_NAMES

    names = (*_CHECKPOINTS, "config.yaml", "metrics.jsonl", CHANGES_FILE, SKIPPED_FILE)
    return tuple(dict.fromkeys((*names, *FILE_NAMES.values())))


class RunExistsError(ValueError):
    """``train.run_dir`` already holds a run and neither resume nor overwrite was asked for, or
    holds files that are not a run's and that a run would write over."""


def _read_manifest(run_dir: Path) -> list[str] | None:
    path = run_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise RunExistsError(
            f"{path} is damaged ({err}); it lists the files of the run in {run_dir}. Delete it "
            "after checking that folder by hand, or train into another train.run_dir"
        ) from None
    return [str(f) for f in files]


def register_run_files(run_dir: str | Path, names: list[str] | tuple[str, ...]) -> None:
    """Add ``names`` (relative to ``run_dir``) to the run's file list."""
    run_dir = Path(run_dir)
    listed = _read_manifest(run_dir) or []
    merged = sorted(set(listed) | {Path(n).as_posix() for n in names})
    if merged != sorted(listed):
        atomic_write_text(run_dir / MANIFEST, json.dumps({"files": merged}, indent=1) + "\n")


@dataclass
class FolderState:
    """What ``run_dir`` holds, as far as runs are concerned."""

    run_dir: Path
    owned: list[str] = field(default_factory=list)  # existing files of a run (listed, or legacy)
    foreign: list[str] = field(default_factory=list)  # a run's names that no list claims
    listed: bool = False  # the folder has a run_files.json

    @property
    def is_run(self) -> bool:
        """A run worth protecting: it saved a checkpoint."""
        return any(name in self.owned for name in _CHECKPOINTS)


def inspect_run_folder(run_dir: str | Path) -> FolderState:
    """Which files of ``run_dir`` belong to a run, and which would a run write over.

    Without ``run_files.json`` (a run of an older version), a folder with a checkpoint owns the
    run's usual names and the TensorBoard event files directly in ``tensorboard/``; a folder
    without one owns nothing.
    """
    run_dir = Path(run_dir)
    state = FolderState(run_dir)
    if not run_dir.is_dir():
        return state
    present = [n for n in run_file_names() if (run_dir / n).is_file()]
    listed = _read_manifest(run_dir)
    if listed is not None:
        state.listed = True
        state.owned = [n for n in listed if (run_dir / n).is_file()] + [MANIFEST]
        state.foreign = [n for n in present if n not in listed]
    elif any(n in present for n in _CHECKPOINTS):
        events = sorted((run_dir / _TENSORBOARD).glob(_EVENTS_GLOB))
        state.owned = present + [f"{_TENSORBOARD}/{p.name}" for p in events if p.is_file()]
    else:
        state.foreign = present
    return state


def remove_run(state: FolderState) -> list[str]:
    """Delete the run's own files (and the folders they emptied); return their names."""
    for name in state.owned:
        (state.run_dir / name).unlink(missing_ok=True)
    board = state.run_dir / _TENSORBOARD
    if board.is_dir() and not any(board.iterdir()):
        board.rmdir()
    return list(state.owned)


def _copy_run(source: FolderState, target: Path, checkpoint: Path) -> None:
    """Copy a run's files into ``target``, ``checkpoint`` as its ``last.pt``, that one last.

    The list is written first and ``last.pt`` last (atomically): a copy killed half-way is a
    folder without a checkpoint, which the next start clears.
    """
    names = [n for n in source.owned if n not in (MANIFEST, "last.pt")]
    target.mkdir(parents=True, exist_ok=True)
    register_run_files(target, [*names, *run_file_names()])
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.run_dir / name, target / name)
    with checkpoint.open("rb") as src:
        atomic_write(target / "last.pt", lambda fh: shutil.copyfileobj(src, fh))


def checkpoint_folder(resume: str | Path) -> Path:
    """The run folder of a checkpoint path (a ``.pt`` file or a run folder)."""
    path = Path(resume)
    return (path if path.is_dir() else path.parent).resolve()


def _refusal(state: FolderState, overwrite: bool) -> str | None:
    """Why a run may not start in (or be copied into) ``state.run_dir``, or None."""
    run_dir = state.run_dir
    if state.foreign:
        shown = ", ".join(state.foreign[:4]) + (", ..." if len(state.foreign) > 4 else "")
        return (
            f"train.run_dir {run_dir} holds {shown}, which no run of this folder lists as its "
            f"own ({MANIFEST}), and a run would write over them; move them or train into "
            "another folder with train.run_dir=PATH (--overwrite deletes only a run's own files)"
        )
    if state.is_run and not overwrite:
        shown = ", ".join(n for n in state.owned if n in _CHECKPOINTS)
        return (
            f"train.run_dir {run_dir} already holds a run ({shown}); continue it with --resume "
            f"{run_dir}, train into another folder with train.run_dir=PATH, or pass --overwrite "
            "to delete that run's files and start again (in Python: main(config, resume=...) "
            "or overwrite=True)"
        )
    return None


class RunFolder:
    """The run folder of one start: its lock, what it holds, what must happen before training.

    :meth:`claim` takes the lock and refuses what must be refused; :meth:`make_ready` deletes
    (``--overwrite``, a start that saved no checkpoint) or copies (a resume into another folder)
    once the caller has validated everything else; :meth:`release` drops the lock. Rank 0 does
    the file work; every rank gets the same answers.
    """

    def __init__(self, run_dir: Path, ctx: dist_utils.DistributedContext) -> None:
        self.run_dir = run_dir
        self.ctx = ctx
        self.lock = FolderLock(run_dir, "train", inside=True)
        self.source_lock: FolderLock | None = None
        self.state = FolderState(run_dir)
        self.source: FolderState | None = None  # the run a resume into this folder copies
        self.resume: Path | None = None

    @classmethod
    def claim(
        cls,
        run_dir: str | Path,
        ctx: dist_utils.DistributedContext,
        resume: str | Path | None = None,
        overwrite: bool = False,
    ) -> RunFolder:
        """Lock ``run_dir`` and check it may take this start; nothing is changed on disk."""
        folder = cls(Path(run_dir), ctx)
        problem, busy = None, False
        if ctx.is_main:
            try:
                problem = folder._claim(resume, overwrite)
            except FolderBusyError as err:  # another process writes there: every rank raises
                problem, busy = str(err), True
            except ValueError as err:  # a damaged list
                problem = str(err)
        problem, busy = dist_utils.broadcast_object((problem, busy), ctx)
        if problem is not None:
            folder.release()
            raise FolderBusyError(problem) if busy else RunExistsError(problem)
        folder.resume = None if resume is None else Path(resume)
        return folder

    def _claim(self, resume: str | Path | None, overwrite: bool) -> str | None:
        self.lock.acquire()
        self.state = inspect_run_folder(self.run_dir)
        resume_here = resume is not None and checkpoint_folder(resume) == self.run_dir.resolve()
        if resume_here:
            self.state = FolderState(self.run_dir)  # a resume continues the run: nothing goes
            return None
        source = None if resume is None else checkpoint_folder(resume)
        if source is not None and source.is_dir():  # another folder: the run is copied here
            self.source_lock = FolderLock(source, "train (copied)", inside=True).acquire()
            self.source = inspect_run_folder(source)
        return _refusal(self.state, overwrite)

    def make_ready(self) -> Path | None:
        """Delete what must go, copy what must come; return the checkpoint to resume from (the
        copy's ``last.pt`` when the run was copied here), or None for a new run."""
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_orphan_temporaries(self.run_dir)
            if self.state.owned:
                removed = remove_run(self.state)
                why = "--overwrite" if self.state.is_run else "a start that saved no checkpoint"
                print(f"{why}: removed {len(removed)} files of the previous run in "
                      f"{self.run_dir}", flush=True)  # fmt: skip
            if self.source is not None and self.resume is not None:
                checkpoint = self.resume if self.resume.is_file() else self.resume / "last.pt"
                _copy_run(self.source, self.run_dir, checkpoint)
                print(f"copied the run in {self.source.run_dir} to {self.run_dir}; it continues "
                      f"there (the original is unchanged)", flush=True)  # fmt: skip
            register_run_files(self.run_dir, run_file_names())
        self.release_source()
        dist_utils.barrier(self.ctx)
        if self.resume is None or checkpoint_folder(self.resume) == self.run_dir.resolve():
            return self.resume
        return self.run_dir / "last.pt"

    def release_source(self) -> None:
        if self.source_lock is not None:
            self.source_lock.release()
            self.source_lock = None

    def release(self) -> None:
        self.release_source()
        self.lock.release()
