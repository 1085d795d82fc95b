"""One trial of ``rankedlist tune``: its config, its training (validation only), its outcome.

A trial trains the recipe with the trial's values into ``<out>/trials/<number>/`` with
``train.main(..., test=False)``: the test split is never opened. Each validation is reported to
Optuna and the pruner may stop the run there. Outcomes:

* completed: COMPLETE with the best validation value of the run (what ``best.pt`` selects);
* pruned by the pruner, or diverged (a non-finite loss: a hopeless configuration): PRUNED;
* interrupted (SIGINT/SIGTERM, during training or its set-up): FAIL, its values queued again so
  that the next worker (or the same command again) re-runs them first; the worker stops;
* any other error: FAIL with the error recorded, and the error is raised (the worker stops).

Validation folds (``folds`` F > 1, ``rankedlist tune --folds F``): the trial trains once per fold
``f`` into ``<out>/trials/<number>/fold<f>/`` with ``data.options.val_fold=f`` (F class-disjoint
val splits; :mod:`rankedlist.data.splits`), one fold after the other; its objective is the mean of
the folds' best validation values, each recorded in the user attribute ``fold_values``. Pruning:
fold ``f``'s validation at iteration ``t`` is reported at step ``f * train.iterations + t``, so
the pruner compares each fold with the same fold of the other trials, and may stop the trial in
any fold (the rest are not trained); the steps of a trial count its iterations fold after fold.

Signals outside a trial's training are deferred to a safe point (:class:`SignalGuard`): a
journal write is never cut in half.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankedlist.training.config import apply_overrides
from rankedlist.training.config_schema import Config
from rankedlist.tune.space import SearchSpace, values_to_overrides
from rankedlist.tune.study import optuna_module

__all__ = [
    "SignalGuard",
    "TrialOutcome",
    "TuneInterrupted",
    "fold_run_dirs",
    "run_trial",
    "trial_dir",
]


class TuneInterrupted(Exception):
    """A signal arrived while a trial was being set up (raised by :class:`SignalGuard`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalGuard:
    """SIGINT/SIGTERM for a tuning worker: remembered, and raised only where that is safe.

    Inside :meth:`interruptible` (a trial's ``train.main`` call, whose training loop installs its
    own handlers for a clean stop) a signal raises :class:`TuneInterrupted`; anywhere else it
    only sets :attr:`signum`, which the worker checks between trials.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raise = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = self.signum or signum
        if self._raise:
            self._raise = False
            raise TuneInterrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        try:
            self._previous = {
                s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
            }
        except ValueError:  # not the main thread: signals stay with the caller
            self._previous = {}
        try:
            yield self
        finally:
            for s, h in self._previous.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.signum is not None:
            raise TuneInterrupted(self.signum)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False


@dataclass
class TrialOutcome:
    number: int
    state: str  # "complete", "pruned", "interrupted"
    value: float | None
    iteration: int
    signum: int | None = None
    note: str = ""


def trial_dir(out: Path, number: int) -> Path:
    return Path(out) / "trials" / f"{number:05d}"


def run_trial(
    study: Any,
    trial: Any,
    space: SearchSpace,
    config: Config,
    out: Path,
    metric: str,
    guard: SignalGuard,
    folds: int = 1,
) -> TrialOutcome:
    """Train ``trial`` (its values from ``space``) on the validation split (on each of ``folds``
    validation folds) and tell Optuna."""
    from rankedlist.training.health import NonFiniteLossError
    from rankedlist.training.train import main as train_main

    optuna = optuna_module()
    state = optuna.trial.TrialState
    run_dir = trial_dir(out, trial.number)
    fold_dirs = fold_run_dirs(run_dir, folds)
    values = space.suggest(trial)  # journal writes: signals wait (the guard defers them)
    overrides = values_to_overrides(space, values, config)
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("run_dir", str(run_dir))
    if folds > 1:
        trial.set_user_attr("fold_run_dirs", [str(d) for d in fold_dirs])
    _say(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))

    reported: list[float] = []  # the last value reported to the pruner
    offset = [0]  # the step of this fold's iteration 0 (folds report one after the other)

    def on_validation(iteration: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            return False
        trial.report(float(value), offset[0] + iteration)
        reported[:] = [float(value)]
        return trial.should_prune()

    fold_values: list[float] = []
    fold_best: list[int | None] = []
    steps = 0
    result = None
    for fold, fold_dir in enumerate(fold_dirs):
        fold_overrides = [f"data.options.val_fold={fold}"] if folds > 1 else []
        try:
            trial_config = apply_overrides(
                config, [*overrides, *fold_overrides, f"train.run_dir={fold_dir}"]
            )
            offset[0] = fold * trial_config.train.iterations
            with guard.interruptible():  # set-up: a signal raises; training: the trainer stops
                result = train_main(
                    trial_config, overwrite=True, test=False, on_validation=on_validation
                )
        except (TuneInterrupted, KeyboardInterrupt) as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            return _interrupted(study, trial, fold_dirs, int(signum))
        except NonFiniteLossError as exc:
            note = "diverged: " + " ".join(str(exc).split())[:300]
            if folds > 1:
                note = f"fold {fold} {note}"
            trial.set_user_attr("note", note)
            study.tell(trial, state=state.PRUNED)
            _cleanup(*fold_dirs)
            _say(f"trial {trial.number}: pruned ({note[:120]})")
            return TrialOutcome(trial.number, "pruned", None, offset[0], note=note)
        except BaseException as exc:
            trial.set_user_attr(
                "error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
            )
            study.tell(trial, state=state.FAIL)
            raise
        steps = offset[0] + result.iteration
        if result.status == "interrupted":
            trial.set_user_attr("iteration", steps)
            if folds == 1:
                trial.set_user_attr("best_iteration", result.best.get("iteration"))
            return _interrupted(study, trial, fold_dirs, int(result.signal or signal.SIGINT))
        if result.status == "pruned":
            break
        value = result.best.get("value")
        if value is None or not math.isfinite(value):
            break
        fold_values.append(float(value))
        fold_best.append(result.best.get("iteration"))
        if folds > 1:
            trial.set_user_attr("fold_values", list(fold_values))
            trial.set_user_attr("fold_best_iterations", list(fold_best))

    trial.set_user_attr("iteration", steps)
    if folds == 1:
        trial.set_user_attr("best_iteration", result.best.get("iteration"))
    _cleanup(*fold_dirs)
    where = f" in fold {len(fold_values)}" if folds > 1 else ""
    if result.status == "pruned":
        why = _pruned_because(study.pruner)
        if reported:
            why = f"val {metric} {reported[0]:.4f}, {why}"
        at = f"at iteration {result.iteration}{where}"
        trial.set_user_attr("note", f"pruned {at}: {why}")
        study.tell(trial, state=state.PRUNED)
        _say(f"trial {trial.number}: pruned {at} ({why})")
        return TrialOutcome(trial.number, "pruned", result.best.get("value"), steps)
    if len(fold_values) < folds:
        trial.set_user_attr("note", f"no finite validation {metric}{where}")
        study.tell(trial, state=state.PRUNED)
        return TrialOutcome(trial.number, "pruned", None, steps)
    value = sum(fold_values) / folds
    study.tell(trial, value)
    if folds > 1:
        each = ", ".join(f"{v:.4f}" for v in fold_values)
        _say(f"trial {trial.number}: complete, val {metric} {value:.4f} (mean of folds {each})")
    else:
        _say(
            f"trial {trial.number}: complete, val {metric} {value:.4f} "
            f"(iteration {result.best.get('iteration')})"
        )
    return TrialOutcome(trial.number, "complete", value, steps)


def fold_run_dirs(run_dir: Path, folds: int) -> list[Path]:
    """The run folders of a trial: ``run_dir`` itself, or ``run_dir/fold<f>`` per fold."""
    return [run_dir] if folds <= 1 else [run_dir / f"fold{f}" for f in range(folds)]


def _pruned_because(pruner: Any) -> str:
    """Why the study's pruner stops a trial, in words."""
    pruners = optuna_module().pruners
    if isinstance(pruner, pruners.MedianPruner):
        return "below the median of the earlier trials at that iteration"
    if isinstance(pruner, pruners.SuccessiveHalvingPruner):
        return "not in the top third of the trials at that rung (successive halving)"
    return f"stopped by the {type(pruner).__name__}"


def _interrupted(study: Any, trial: Any, run_dirs: list[Path], signum: int) -> TrialOutcome:
    """FAIL the trial and queue its values again (the next claim re-runs them from scratch)."""
    optuna = optuna_module()
    trial.set_user_attr("note", f"interrupted by signal {signum}; its values are queued again")
    params = dict(trial.params)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
    _cleanup(*run_dirs)
    _say(f"trial {trial.number}: interrupted by signal {signum}, marked failed")
    return TrialOutcome(trial.number, "interrupted", None, 0, signum=signum)


def _cleanup(*run_dirs: Path) -> None:
    """Trials keep their config and metrics log; their weights are not needed (the best
    configuration is retrained), so the checkpoints go."""
    for run_dir in run_dirs:
        for name in ("last.pt", "best.pt"):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _say(message: str) -> None:
    print(f"tune: {message}", flush=True)


def elapsed(start: float) -> float:
    return time.monotonic() - start
