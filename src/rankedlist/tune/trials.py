"""One trial of ``rankedlist tune``: its config, its training (validation only), its outcome.

A trial trains the recipe with the trial's values into ``<out>/trials/<number>/`` with
``train.main(..., test=False)``: the test split is never opened. Each validation is reported to
Optuna and the pruner may stop the run there. Outcomes:

* completed: COMPLETE with the best validation value of the run (what ``best.pt`` selects);
* pruned by the pruner, or diverged (a non-finite loss: a hopeless configuration): PRUNED;
* interrupted (SIGINT/SIGTERM, during training or its set-up): FAIL, its values queued again so
  that the next worker (or the same command again) re-runs them first; the worker stops;
* any other error: FAIL with the error recorded, and the error is raised (the worker stops).

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

from rankedlist.training.config import Config, apply_overrides
from rankedlist.tune.space import SearchSpace, values_to_overrides
from rankedlist.tune.study import optuna_module

__all__ = ["SignalGuard", "TrialOutcome", "TuneInterrupted", "run_trial", "trial_dir"]


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
) -> TrialOutcome:
    """Train ``trial`` (its values from ``space``) on the validation split and tell Optuna."""
    from rankedlist.training.health import NonFiniteLossError
    from rankedlist.training.train import main as train_main

    optuna = optuna_module()
    state = optuna.trial.TrialState
    run_dir = trial_dir(out, trial.number)
    values = space.suggest(trial)  # journal writes: signals wait (the guard defers them)
    overrides = values_to_overrides(space, values, config)
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("run_dir", str(run_dir))
    _say(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))

    reported: list[float] = []  # the last value reported to the pruner

    def on_validation(iteration: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            return False
        trial.report(float(value), iteration)
        reported[:] = [float(value)]
        return trial.should_prune()

    try:
        trial_config = apply_overrides(config, [*overrides, f"train.run_dir={run_dir}"])
        with guard.interruptible():  # set-up: a signal raises; training: the trainer stops
            result = train_main(
                trial_config, overwrite=True, test=False, on_validation=on_validation
            )
    except (TuneInterrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        return _interrupted(study, trial, run_dir, int(signum))
    except NonFiniteLossError as exc:
        note = "diverged: " + " ".join(str(exc).split())[:300]
        trial.set_user_attr("note", note)
        study.tell(trial, state=state.PRUNED)
        _cleanup(run_dir)
        _say(f"trial {trial.number}: pruned ({note[:120]})")
        return TrialOutcome(trial.number, "pruned", None, 0, note=note)
    except BaseException as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500])
        study.tell(trial, state=state.FAIL)
        raise

    trial.set_user_attr("iteration", result.iteration)
    trial.set_user_attr("best_iteration", result.best.get("iteration"))
    if result.status == "interrupted":
        return _interrupted(study, trial, run_dir, int(result.signal or signal.SIGINT))
    value = result.best.get("value")
    _cleanup(run_dir)
    if result.status == "pruned":
        why = _pruned_because(study.pruner)
        if reported:
            why = f"val {metric} {reported[0]:.4f}, {why}"
        trial.set_user_attr("note", f"pruned at iteration {result.iteration}: {why}")
        study.tell(trial, state=state.PRUNED)
        _say(f"trial {trial.number}: pruned at iteration {result.iteration} ({why})")
        return TrialOutcome(trial.number, "pruned", value, result.iteration)
    if value is None or not math.isfinite(value):
        trial.set_user_attr("note", f"no finite validation {metric}")
        study.tell(trial, state=state.PRUNED)
        return TrialOutcome(trial.number, "pruned", None, result.iteration)
    study.tell(trial, float(value))
    _say(
        f"trial {trial.number}: complete, val {metric} {value:.4f} "
        f"(iteration {result.best.get('iteration')})"
    )
    return TrialOutcome(trial.number, "complete", float(value), result.iteration)


def _pruned_because(pruner: Any) -> str:
    """Why the study's pruner stops a trial, in words."""
    pruners = optuna_module().pruners
    if isinstance(pruner, pruners.MedianPruner):
        return "below the median of the earlier trials at that iteration"
    if isinstance(pruner, pruners.SuccessiveHalvingPruner):
        return "not in the top third of the trials at that rung (successive halving)"
    return f"stopped by the {type(pruner).__name__}"


def _interrupted(study: Any, trial: Any, run_dir: Path, signum: int) -> TrialOutcome:
    """FAIL the trial and queue its values again (the next claim re-runs them from scratch)."""
    optuna = optuna_module()
    trial.set_user_attr("note", f"interrupted by signal {signum}; its values are queued again")
    params = dict(trial.params)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
    _cleanup(run_dir)
    _say(f"trial {trial.number}: interrupted by signal {signum}, marked failed")
    return TrialOutcome(trial.number, "interrupted", None, 0, signum=signum)


def _cleanup(run_dir: Path) -> None:
    """Trials keep their config and metrics log; their weights are not needed (the best
    configuration is retrained), so the checkpoints go."""
    for name in ("last.pt", "best.pt"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _say(message: str) -> None:
    print(f"tune: {message}", flush=True)


def elapsed(start: float) -> float:
    return time.monotonic() - start
