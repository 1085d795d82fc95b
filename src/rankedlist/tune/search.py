"""``tune(options)``: the search of ``rankedlist tune``, from the recipe to ``--out``.

1. The recipe (a path or a recipe name) with its overrides, set up for the search: a
   class-disjoint validation split (``data.val_fraction`` 0.2 when the recipe has none),
   ``train.select_metric`` = the objective, a validation every ``train.iterations / 5``
   iterations when the recipe has none, no TensorBoard, no report; with ``folds`` F > 1, F
   class-disjoint validation splits (``data.options.val_fold`` 0 to F-1, F x
   ``data.val_fraction`` <= 1), each trial trained once per fold, its objective the folds' mean;
2. the search space (:mod:`rankedlist.tune.space`: the shared ``lr`` and ``k`` and the loss's
   own), checked at both ends of every range; the choices of ``k`` whose P = batch / k exceeds
   the classes of the search's training split are left out (a note says which), and with no
   ``k`` searched the recipe's ``data.p`` must fit;
3. the storage (a database URL is connected to here: an unreachable one is a ``ValueError``
   before anything runs) and the study (:mod:`rankedlist.tune.study`), created or joined; a
   study whose best was tested already (:func:`rankedlist.tune.final.refuse_a_second_test`)
   takes no more trials;
4. trials until the study has N (:mod:`rankedlist.tune.trials`), ``--timeout`` or a signal;
5. when all N are done: the best configuration trained once more and tested, ``best.yaml``,
   ``trials.csv`` and ``report.md`` (:mod:`rankedlist.tune.final`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankedlist.training.config import apply_overrides, load_config
from rankedlist.training.config_schema import Config, TrainConfig
from rankedlist.training.recipes import find_recipe
from rankedlist.training.resume_config import MACHINE_LOCAL_KEYS
from rankedlist.tune.space import SearchSpace, held_out_text, load_space
from rankedlist.tune.study import (
    claim_trial,
    counted_trials,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    optuna_module,
)
from rankedlist.tune.trials import SignalGuard, run_trial

__all__ = ["DEFAULT_METRIC", "TuneOptions", "TuneResult", "tune"]

#: The objective when the recipe keeps the trainer's default selection metric.
DEFAULT_METRIC = "map@r"
#: The validation share carved from the training classes when the recipe has none.
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class TuneOptions:
    """What ``rankedlist tune`` takes (see ``rankedlist tune --help``)."""

    config: str | Path
    trials: int
    study: str | None = None
    storage: str | None = None
    out: str | Path | None = None
    space: str | Path | None = None
    timeout: float | None = None
    overrides: list[str] = field(default_factory=list)
    metric: str | None = None
    pruner: str = "median"
    seed: int = 0
    search_only: bool = False
    folds: int = 1


@dataclass
class TuneResult:
    """``status``: ``"done"`` (N trials, the final run tested unless ``search_only``),
    ``"searching"`` (this worker has nothing left to claim; others still run trials),
    ``"finishing"`` (another worker is training the best configuration), ``"timeout"`` or
    ``"interrupted"`` (``signal`` says which)."""

    status: str
    out: Path
    study: str
    finished: int
    n_trials: int
    best: dict[str, Any] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    signal: int | None = None


@dataclass
class Setup:
    """Everything a worker needs, resolved once."""

    name: str
    out: Path
    recipe: Config  # the recipe with the command line's overrides
    search: Config  # ... set up for the search (validation split, objective, no report)
    space: SearchSpace
    metric: str
    storage_name: str
    n_trials: int
    options: TuneOptions


def prepare(options: TuneOptions) -> Setup:
    """Check the options, load the recipe and the space (no Optuna yet)."""
    if (
        isinstance(options.trials, bool)
        or not isinstance(options.trials, int)
        or options.trials < 1
    ):
        raise ValueError(f"--trials {options.trials!r}: give the study's total, an integer >= 1")
    if options.timeout is not None and not options.timeout > 0:
        raise ValueError(f"--timeout {options.timeout!r}: give seconds > 0 (or leave it out)")
    folds = options.folds
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(
            f"--folds {folds!r}: give the number of validation folds, an integer >= 1 "
            "(1: one validation split; 4: the folds of Musgrave et al.)"
        )
    path = find_recipe(options.config)
    recipe = load_config(path, list(options.overrides))
    metric = options.metric or (
        recipe.train.select_metric
        if recipe.train.select_metric != TrainConfig.select_metric
        else DEFAULT_METRIC
    )
    if metric not in ("map@r", "r_precision") and not metric.startswith("recall@"):
        raise ValueError(
            f"--metric {metric!r} is not a validation metric; use map@r, r_precision or "
            "recall@K (e.g. recall@1)"
        )
    recipe = apply_overrides(recipe, [f"train.select_metric={metric}"])
    t = recipe.train
    search = apply_overrides(
        recipe,
        [
            f"data.val_fraction={recipe.data.val_fraction or DEFAULT_VAL_FRACTION}",
            f"train.eval_every={t.eval_every or max(1, t.iterations // 5)}",
            "train.tensorboard=false",
            "train.report=false",
        ],
    )
    fraction = search.data.val_fraction
    if folds > 1 and folds * fraction > 1.0 + 1e-9:
        raise ValueError(
            f"--folds {folds} x data.val_fraction {fraction:g} = {folds * fraction:g} of the "
            f"training classes, but the {folds} validation folds must hold disjoint classes "
            f"(at most all of them); use --folds <= {max(1, int(1.0 / fraction + 1e-9))} or "
            f"data.val_fraction <= {1.0 / folds:.4g}"
        )
    name = options.study or path.stem
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"--study {name!r}: give a plain name (letters, digits, - and _)")
    out = Path(options.out) if options.out is not None else Path("runs") / "tune" / name
    if folds > 1:  # every fold's split opened once up front: a fold the data refuses stops here
        counts = {train_classes(fold_config(search, f, folds)) for f in range(folds)}
        classes = functools.cache(lambda: min(counts))
    else:
        classes = functools.cache(lambda: train_classes(search))
    space = load_space(search, options.space, train_classes=classes)
    if "k" not in space.params and search.data.p > classes():
        raise ValueError(
            f"data.p={search.data.p} classes per batch, but the search's training split holds "
            f"only {classes()} classes{held_out_text(search)}; lower data.p (or "
            "data.val_fraction), or search k (e.g. `k: {choices: [4, 8]}` in a --space file)"
        )
    return Setup(name, out, recipe, search, space, metric, "", options.trials, options)


def fold_config(config: Config, fold: int, folds: int) -> Config:
    """``config`` set up for validation fold ``fold`` of ``folds`` (unchanged with one fold)."""
    return apply_overrides(config, [f"data.options.val_fold={fold}"]) if folds > 1 else config


def train_classes(config: Config) -> int:
    """The classes of the training split ``config``'s runs train on (the split is opened, its
    labels counted; the validation and test splits are not opened)."""
    import warnings

    import numpy as np

    from rankedlist.training.recipe_data import get_split_dataset

    with warnings.catch_warnings():  # e.g. skipped images: each trial's own log reports them
        warnings.simplefilter("ignore")
        dataset = get_split_dataset(config, "train", None)
    return len(np.unique(np.asarray(dataset.labels)))


def tune(options: TuneOptions) -> TuneResult:
    """Run (or join, or resume) the study of ``options``; see the module docstring."""
    setup = prepare(options)
    optuna = optuna_module()
    out = setup.out
    storage, setup.storage_name, lock = open_storage(options.storage, out)  # before any output
    out.mkdir(parents=True, exist_ok=True)
    described = {
        "recipe": _without_machine_local_keys(setup.search.to_dict()),
        "space": setup.space.to_dict(),
        "metric": setup.metric,
    }
    if options.folds > 1:  # (not recorded with one fold: studies made before --folds still join)
        described["folds"] = options.folds
    eval_every = setup.search.train.eval_every
    study = open_study(
        setup.name,
        storage,
        described,
        make_sampler(options.seed, setup.n_trials, 0),
        make_pruner(options.pruner, setup.n_trials, eval_every),
        lock,
    )
    from rankedlist.tune.final import finish, refuse_a_second_test
    from rankedlist.tune.report import write_trials_csv

    refuse_a_second_test(study, setup)  # before anything is printed or run
    _say(
        f"study {setup.name!r} in {setup.storage_name}: {setup.n_trials} trials of "
        f"{setup.search.train.iterations} iterations, objective val {setup.metric} "
        f"(data.val_fraction {setup.search.data.val_fraction:g}{_folds_text(options.folds)}), "
        f"space: {setup.space.source}"
    )
    for note in setup.space.notes:
        _say(note)

    start = time.monotonic()
    status, signum = "searching", None
    with SignalGuard().installed() as guard:
        while True:
            if guard.signum is not None:
                status, signum = "interrupted", guard.signum
                break
            if options.timeout is not None and time.monotonic() - start > options.timeout:
                status = "timeout"
                break
            trial = claim_trial(study, setup.n_trials, lock, options.seed)
            if trial is None:
                break
            outcome = run_trial(
                study, trial, setup.space, setup.search, out, setup.metric, guard, options.folds
            )
            write_trials_csv(study, setup, out / "trials.csv")
            if outcome.state == "interrupted":
                status, signum = "interrupted", outcome.signum
                break
        state = optuna.trial.TrialState
        counted = counted_trials(study)
        finished = sum(t.state in (state.COMPLETE, state.PRUNED) for t in counted)
        running = len(counted) - finished
        result = TuneResult(status, out, setup.name, finished, setup.n_trials, signal=signum)
        write_trials_csv(study, setup, out / "trials.csv")
        if status != "searching":
            _say(_stopped_message(status, signum, finished, setup.n_trials))
            return result
        if running or finished < setup.n_trials:
            _say(
                f"{finished} of {setup.n_trials} trials finished, {running} still running in "
                "other workers; the last worker to finish trains the best configuration and "
                "writes the report (or run this command again once they are done)"
            )
            return result
        return finish(study, setup, result, guard)


def _folds_text(folds: int) -> str:
    if folds <= 1:
        return ""
    return f"; the mean over {folds} class-disjoint validation folds, each trial trained {folds}x"


def _stopped_message(status: str, signum: int | None, finished: int, n: int) -> str:
    why = f"interrupted by signal {signum}" if status == "interrupted" else "--timeout reached"
    return (
        f"{why} with {finished} of {n} trials finished; the study is consistent (an interrupted "
        "trial is marked failed and its values queued again): run the same command again to "
        f"continue to {n} trials"
    )


def _without_machine_local_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` less the keys each worker may set for its own machine (MACHINE_LOCAL_KEYS)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key in MACHINE_LOCAL_KEYS:
        section, _, leaf = key.rpartition(".")
        (out.get(section, {}) if section else out).pop(leaf, None)
    return out


def _say(message: str) -> None:
    print(f"tune: {message}", flush=True)
