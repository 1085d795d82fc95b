"""What ``rankedlist compare`` checks before anything runs, and the studies it will search.

:func:`resolve_plan` turns a :class:`~rankedlist.compare.plan.ComparePlan` into one
:class:`LossPlan` per recipe (its ``rankedlist tune`` options and tune's own set-up), raising one
``ValueError`` for the first problem: an unknown recipe (the message lists the known ones),
recipes on different datasets, protocols or iteration budgets (it names both), validation folds
the training classes cannot hold, a search space or a batch the data cannot hold (tune's checks,
:func:`rankedlist.tune.search.prepare`), losses that would not search the same shared dimensions
(:data:`rankedlist.tune.space.SHARED_DIMENSIONS`: ``lr`` relative to the recipe's, ``k``), a
storage that cannot be reached or written (:func:`rankedlist.tune.study.open_storage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankedlist.compare.plan import ComparePlan, recipe_key
from rankedlist.training.config import load_config
from rankedlist.training.config_schema import Config
from rankedlist.training.recipes import find_recipe, list_recipes

__all__ = ["JOURNAL", "LossPlan", "Resolved", "describe_space", "resolve_plan", "shared_names"]

#: The default storage of a comparison's studies, in ``--out``.
JOURNAL = "studies.journal"


@dataclass
class LossPlan:
    """One recipe of the comparison: its name, file, tune options and tune's set-up."""

    key: str
    path: Path
    options: Any  # rankedlist.tune.search.TuneOptions
    setup: Any  # rankedlist.tune.search.Setup: .recipe, .search, .space, .metric

    @property
    def study(self) -> str:
        return str(self.options.study)

    @property
    def search_out(self) -> Path:
        return Path(self.options.out)


@dataclass
class Resolved:
    """A plan whose every check passed."""

    plan: ComparePlan
    losses: list[LossPlan]
    storage: str  # the journal file or database URL every study lives in (given to tune)
    storage_name: str  # ... as printed (a URL without its password)
    optuna_storage: Any  # the opened Optuna storage
    claim_lock: Any  # the journal's claim lock (None for a database)
    dataset: str
    protocol: str
    iterations: int


def resolve_plan(plan: ComparePlan) -> Resolved:
    """Check everything that can be checked before a trial runs; see the module docstring."""
    from rankedlist.training.recipe_data import protocol_name

    paths = {recipe_key(r): _find(r, plan) for r in plan.recipes}
    configs = {key: load_config(path, list(plan.overrides)) for key, path in paths.items()}
    _same(configs, paths, "dataset", lambda c: c.data.dataset, "data.dataset=NAME")
    _same(configs, paths, "protocol", protocol_name, "train.protocol=NAME")
    _same(configs, paths, "train.iterations", lambda c: c.train.iterations, "train.iterations=N")
    _check_folds(plan, configs, paths)
    storage = plan.storage or str(plan.out / JOURNAL)
    losses = [_loss_plan(plan, key, path, storage) for key, path in paths.items()]
    _same_shared(losses)
    opened, name, lock = _open_storage(plan, storage)
    first = next(iter(configs.values()))
    return Resolved(
        plan, losses, storage, name, opened, lock, first.data.dataset, protocol_name(first),
        first.train.iterations,
    )  # fmt: skip


def _find(recipe: str, plan: ComparePlan) -> Path:
    try:
        return find_recipe(recipe)
    except FileNotFoundError:
        known = ", ".join(name for name, _ in list_recipes())
        raise ValueError(
            f"{plan.where('recipes')}: {recipe!r} is neither a recipe name nor a YAML file; the "
            f"recipes are {known} (`rankedlist recipes` describes them), or give a file path"
        ) from None


def _same(configs: dict[str, Config], paths: dict[str, Path], what: str, value, fix: str) -> None:
    """All recipes agree on ``value(config)``, or a ValueError naming two that do not."""
    values = {key: value(config) for key, config in configs.items()}
    first = next(iter(values))
    for key, v in values.items():
        if v != values[first]:
            raise ValueError(
                f"recipes {first} ({paths[first]}: {what} {values[first]}) and {key} "
                f"({paths[key]}: {what} {v}) differ; a comparison trains and tests every loss "
                f"alike: compare recipes with the same {what}, or set {fix} for all of them "
                "(overrides apply to every recipe)"
            )


def _check_folds(plan: ComparePlan, configs: dict[str, Config], paths: dict[str, Path]) -> None:
    from rankedlist.tune.search import DEFAULT_VAL_FRACTION

    for key, config in configs.items():
        fraction = config.data.val_fraction or DEFAULT_VAL_FRACTION
        if plan.folds * fraction > 1 + 1e-9:
            origin = (
                f"{paths[key]} sets data.val_fraction {fraction:g}"
                if config.data.val_fraction
                else f"the search holds out data.val_fraction {fraction:g} (tune's default)"
            )
            raise ValueError(
                f"{plan.where('folds')} {plan.folds}: {origin}, and {plan.folds} class-disjoint "
                f"folds of {fraction:g} need {plan.folds * fraction:g} of the training classes "
                f"(more than all of them); use --folds {int(1 / fraction)} or fewer, or set "
                f"data.val_fraction={1 / plan.folds:.4g} or less"
            )


def _open_storage(plan: ComparePlan, storage: str) -> tuple[Any, str, Any]:
    """tune's storage (a database is connected to: an unreachable one is a ValueError)."""
    from rankedlist.tune.study import open_storage

    try:
        return open_storage(storage, plan.out)
    except OSError as exc:  # a journal whose folder cannot be made
        raise ValueError(
            f"{plan.where('storage')} {storage} cannot be written ({exc.strerror or exc}); give "
            "a writable journal file path or a database URL"
        ) from None


def shared_names(loss: LossPlan) -> tuple[str, ...]:
    """The shared dimensions ``loss`` searches (the spec of tune's ``SHARED_DIMENSIONS``)."""
    return tuple(loss.setup.space.shared)


def _same_shared(losses: list[LossPlan]) -> None:
    first = losses[0]
    for loss in losses[1:]:
        if shared_names(loss) != shared_names(first):
            raise ValueError(
                f"recipes {first.key} ({first.path}: shared dimensions "
                f"{', '.join(shared_names(first)) or 'none'}) and {loss.key} ({loss.path}: "
                f"{', '.join(shared_names(loss)) or 'none'}) would not search the same shared "
                "dimensions (a k the batch or the data do not allow is left out); give them the "
                "same batch (data.p, data.k) for every recipe"
            )


def _loss_plan(plan: ComparePlan, key: str, path: Path, storage: str) -> LossPlan:
    from rankedlist.tune.search import TuneOptions, prepare

    options = TuneOptions(
        config=str(path), trials=plan.trials, study=f"compare-{plan.out.name}-{key}",
        storage=storage, out=plan.out / "search" / key, overrides=list(plan.overrides),
        metric=plan.metric, pruner=plan.pruner, seed=plan.sampler_seed, search_only=True,
        folds=plan.folds,
    )  # fmt: skip
    return LossPlan(key, path, options, prepare(options))


def describe_space(loss: LossPlan) -> dict[str, dict[str, Any]]:
    """The built search space of ``loss`` as the results schema has it: ``{dim: {low, high,
    log[, step, type]} or {choices}, shared}`` (from tune's ``describe_space``)."""
    from rankedlist.tune.space import describe_space as tune_describe

    out = {}
    for name, entry in tune_describe(loss.setup.space).items():
        if "choices" in entry:
            spec: dict[str, Any] = {"choices": list(entry["choices"])}
        else:
            spec = {"low": entry["low"], "high": entry["high"], "log": bool(entry.get("log"))}
            if entry.get("step"):
                spec["step"] = entry["step"]
            if entry.get("kind") == "int":
                spec["type"] = "int"
        out[name] = {**spec, "shared": bool(entry["shared"])}
    return out
