"""What a run hands back: :class:`TrainResult` (what ``main`` returns) and its assembly from
the run once training has ended (:func:`trained`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankedlist.training.run import Run
from rankedlist.training.run_log import RunLog

__all__ = ["TrainResult", "trained"]


@dataclass
class TrainResult:
    """What :func:`~rankedlist.training.train.main` returns.

    ``status`` is ``"completed"``, ``"interrupted"`` (a signal; a checkpoint was saved),
    ``"stopped"`` (``stop_after`` reached; a checkpoint was saved) or ``"pruned"`` (the
    ``on_validation`` hook stopped it; a checkpoint was saved). ``test_metrics`` maps ``"fused"``
    and each head name to the evaluation's flat metric dict (empty unless completed).
    ``validation`` lists ``{"step": iteration, metric: value, ...}`` for every validation of the
    run (resumed parts included); ``best`` is ``{"metric", "value", "iteration"}``.
    """

    run_dir: Path
    status: str
    iteration: int
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    report_files: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    signal: int | None = None
    validation: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


def trained(run: Run, log: RunLog) -> TrainResult:
    """The result as training leaves it: ``"completed"`` at the run's iteration, ``last.pt``,
    every validation in the run's log (resumed parts included) and the best so far. The caller
    replaces the status (a stop) or adds the test metrics and the report's files."""
    history = [r for r in log.records() if any(k.startswith("val/") for k in r)]
    validation = [{k.removeprefix("val/"): v for k, v in r.items()} for r in history]
    return TrainResult(
        run.run_dir,
        "completed",
        run.iteration,
        checkpoint=run.run_dir / "last.pt",
        validation=validation,
        best=dict(run.best),
    )
