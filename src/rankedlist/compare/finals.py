"""The final runs of a comparison: each loss tuned and untuned, once per seed, tested once.

``OUT/runs/<recipe>/tuned/seed<S>/`` trains the loss's best configuration
(``OUT/search/<recipe>/best.yaml``) and ``OUT/runs/<recipe>/untuned/seed<S>/`` its recipe, both
on all the training classes with ``train.seed=S``, and both end with one evaluation of the test
split (``metrics.json``). A run whose ``metrics.json`` exists is done: it is never trained or
tested again, its metrics are read back.

One process at a time per run: :func:`visit` takes ``OUT/runs/<recipe>/<kind>/.seed<S>.lock``
(:class:`~rankedlist.folder_lock.FolderLock`, released by the kernel if the process dies) and a
process that finds it held moves on (``"busy"``). An interrupted run resumes from its
``last.pt`` on the next visit.

Every test evaluation appends one line to ``OUT/test_reads.jsonl`` (loss, kind, seed, time,
worker) while the run's lock is still held, so each (loss, kind, seed) is logged once; a run
tested by a process killed before it could log is logged on the next visit, marked ``late``. An
evaluation cut short by a signal gave no metrics and is not counted (the run is tested when it
resumes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rankedlist.atomic_write import atomic_write_text
from rankedlist.compare.checks import LossPlan
from rankedlist.folder_lock import FolderBusyError, FolderLock

__all__ = ["KINDS", "CompareInterrupted", "FinalRun", "TestReads", "final_config", "visit"]

#: The two final runs of each loss and seed.
KINDS = ("tuned", "untuned")
TEST_READS = "test_reads.jsonl"
_QUIET = ("train.tensorboard=false", "train.report=false")


class CompareInterrupted(Exception):
    """SIGINT/SIGTERM stopped the comparison; everything done so far is kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"interrupted by signal {signum}; the studies and the runs are consistent (done runs "
            "are kept, an interrupted run resumes from its last.pt): run the same command again "
            "to continue"
        )
        self.signum = signum


@dataclass(frozen=True)
class FinalRun:
    loss: LossPlan
    kind: str  # "tuned" or "untuned"
    seed: int
    out: Path  # the comparison's --out

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.loss.key / self.kind / f"seed{self.seed}"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def name(self) -> str:
        return f"{self.loss.key} {self.kind} seed {self.seed}"

    def key(self) -> tuple[str, str, int]:
        return (self.loss.key, self.kind, self.seed)


@dataclass
class TestReads:
    """``OUT/test_reads.jsonl``: one line per evaluation of the test split."""

    path: Path
    by_me: int = 0
    reused: set[tuple[str, str, int]] = field(default_factory=set)

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def total(self) -> int:
        return len(self.lines())

    def logged(self, run: FinalRun) -> bool:
        return any((r.get("loss"), r.get("kind"), r.get("seed")) == run.key() for r in self.lines())

    def append(self, run: FinalRun, late: bool = False) -> None:
        record: dict[str, Any] = {
            "loss": run.loss.key, "kind": run.kind, "seed": run.seed,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_dir": str(run.run_dir),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }  # fmt: skip
        if late:
            record["late"] = "tested by a process that stopped before logging it"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            _flock(fh)
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if not late:
            self.by_me += 1


def _flock(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: appends of one short line are not split anyway
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file is closed


def final_config(run: FinalRun) -> Any:
    """The config of ``run``: the best configuration or the recipe, with the seed and folder."""
    from rankedlist.training.config import apply_overrides, load_config

    extra = [f"train.seed={run.seed}", f"train.run_dir={run.run_dir}", *_QUIET]
    if run.kind == "tuned":
        return load_config(run.loss.search_out / "best.yaml", extra)
    return apply_overrides(run.loss.setup.recipe, extra)


def check_done(run: FinalRun) -> None:
    """A tested run must be the run of this plan: a ValueError if its config differs."""
    saved = run.run_dir / "config.yaml"
    if not run.metrics.is_file() or not saved.is_file():
        return
    if run.kind == "tuned" and not (run.loss.search_out / "best.yaml").is_file():
        return
    want, have = final_config(run).to_dict(), yaml.safe_load(saved.read_text())
    if want != have:
        key, there, now = _difference(have, want)
        raise ValueError(
            f"{run.metrics}: this {run.kind} run was tested already with another configuration "
            f"({key}: {there!r} there, {now!r} now); it is not tested again (the test split of a "
            "comparison is read once per loss, kind and seed): run this plan with a new --out"
        )


def _difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any]:
    """The first key where ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the config", a, b


def visit(run: FinalRun, guard: Any, reads: TestReads) -> str:
    """Make ``run`` done if this process can: ``"done"`` (it was), ``"ran"`` (trained and tested
    now) or ``"busy"`` (another process holds it). Raises :class:`CompareInterrupted`."""
    if run.metrics.is_file() and reads.logged(run):
        check_done(run)
        reads.reused.add(run.key())
        return "done"
    lock = FolderLock(run.run_dir, "compare final run")
    try:
        lock.acquire()
    except FolderBusyError:
        return "busy"
    try:
        if run.metrics.is_file():  # tested: by a process that stopped before logging it
            check_done(run)
            if not reads.logged(run):
                reads.append(run, late=True)
            reads.reused.add(run.key())
            return "done"
        return _train(run, guard, reads)
    finally:
        lock.release()


def _train(run: FinalRun, guard: Any, reads: TestReads) -> str:
    from rankedlist.training.signals import RunInterrupted
    from rankedlist.training.train import main as train_main
    from rankedlist.tune.trials import TuneInterrupted

    config = final_config(run)
    saved = run.run_dir / "config.yaml"
    same = saved.is_file() and yaml.safe_load(saved.read_text()) == config.to_dict()
    resume = run.run_dir if same and (run.run_dir / "last.pt").is_file() else None
    print(
        f"compare: {run.name}: {'resumed' if resume else 'trained'} in {run.run_dir}, then the "
        "test split once",
        flush=True,
    )
    try:
        with guard.interruptible():
            result = train_main(config, resume=resume, overwrite=resume is None)
    except FolderBusyError:  # another comparison process trains or tests this run now
        return "busy"
    except RunInterrupted as exc:
        raise CompareInterrupted(exc.signum) from None
    except (TuneInterrupted, KeyboardInterrupt) as exc:
        raise CompareInterrupted(int(getattr(exc, "signum", signal.SIGINT))) from None
    if result.status != "completed":
        raise CompareInterrupted(int(result.signal or signal.SIGINT))
    if not run.metrics.is_file():
        atomic_write_text(run.metrics, json.dumps({"test": result.test_metrics.get("fused", {})}))
    reads.append(run)
    return "ran"


def read_metrics(run: FinalRun) -> dict[str, Any] | None:
    """The fused test metrics of a done run (None: not done)."""
    if not run.metrics.is_file():
        return None
    return dict(json.loads(run.metrics.read_text())["test"])
