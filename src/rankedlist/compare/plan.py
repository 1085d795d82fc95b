"""The plan of ``rankedlist compare``: what is compared on which budget, checked up front.

A plan comes from the command line or from a YAML file (``--plan plan.yaml``) with the same
names; the command line's values replace the file's and its overrides follow the file's::

    recipes: [glyphs, glyphs_ms]          # recipe names or paths: one loss each
    trials: 8                             # trials per loss, the same for every loss
    seeds: [0, 1, 2]                      # final runs per loss, tuned and untuned
    folds: 1                              # class-disjoint validation folds (objective: mean)
    storage: null                         # a journal file (default OUT/studies.journal) or a URL
    out: runs/compare
    metric: map@r                         # the objective of every search
    pruner: median
    sampler_seed: 0                       # the TPE seed of every study
    overrides: [train.iterations=300]     # for every recipe: the searches and the final runs

:func:`parse_plan` checks the values (one ``ValueError`` naming the value, where it came from and
the fix); :func:`rankedlist.compare.checks.resolve_plan` then checks the recipes, the budget
and the storage. Nothing runs before both pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PLAN_KEYS", "ComparePlan", "load_plan_file", "parse_plan", "recipe_key"]

#: The keys of a plan file (and the command line's options, ``--sampler-seed`` for sampler_seed).
PLAN_KEYS = (
    "recipes", "trials", "seeds", "folds", "storage", "out", "metric", "pruner", "sampler_seed",
    "overrides",
)  # fmt: skip
PRUNERS = ("median", "halving", "none")
DEFAULTS: dict[str, Any] = {
    "trials": 8,
    "seeds": [0, 1, 2],
    "folds": 1,
    "storage": None,
    "out": "runs/compare",
    "metric": "map@r",
    "pruner": "median",
    "sampler_seed": 0,
    "overrides": [],
}


@dataclass(frozen=True)
class ComparePlan:
    """A checked plan (see the module docstring); ``source`` says where it came from."""

    recipes: tuple[str, ...]
    trials: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    folds: int = 1
    storage: str | None = None
    out: Path = Path("runs/compare")
    metric: str = "map@r"
    pruner: str = "median"
    sampler_seed: int = 0
    overrides: tuple[str, ...] = field(default_factory=tuple)
    source: str = "the command line"

    def where(self, key: str) -> str:
        """How a message names the plan value ``key``: ``--key`` or ``plan file P: key``."""
        if self.source == "the command line":
            return f"--{key.replace('_', '-')}"
        return f"{self.source}: {key}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        data.update(out=str(self.out), recipes=list(self.recipes), seeds=list(self.seeds))
        data["overrides"] = list(self.overrides)
        return data


def load_plan_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a plan file; unknown keys, bad YAML or a missing file are a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--plan {path}: no such file; give the path of a YAML plan file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ValueError(f"plan file {path} is not valid YAML ({problem}); fix it") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"plan file {path}: expected a mapping of {', '.join(PLAN_KEYS)}, got "
            f"{type(data).__name__}; write e.g. `recipes: [glyphs, glyphs_ms]`"
        )
    unknown = sorted(str(k) for k in data if k not in PLAN_KEYS)
    if unknown:
        raise ValueError(
            f"plan file {path}: unknown key(s) {', '.join(unknown)}; the keys of a plan are "
            f"{', '.join(PLAN_KEYS)}"
        )
    return data


def parse_plan(
    values: Mapping[str, Any] | None = None, plan_file: str | Path | None = None
) -> ComparePlan:
    """The plan of ``values`` (the command line's; None = not given) over ``plan_file``'s."""
    given = {k: v for k, v in (values or {}).items() if v is not None}
    unknown = sorted(set(given) - set(PLAN_KEYS))
    if unknown:
        raise ValueError(f"unknown plan value(s) {unknown}; the keys are {', '.join(PLAN_KEYS)}")
    data: dict[str, Any] = {}
    if plan_file is not None:
        data = load_plan_file(plan_file)
    source = f"plan file {plan_file}" if plan_file is not None else "the command line"
    merged = {**DEFAULTS, **data, **{k: v for k, v in given.items() if k != "overrides"}}
    merged["overrides"] = [*_list(data.get("overrides") or []), *_list(given.get("overrides", []))]
    where = {
        k: f"--{k.replace('_', '-')}" if k in given or plan_file is None else f"{source}: {k}"
        for k in PLAN_KEYS
    }
    return ComparePlan(
        recipes=_recipes(merged.get("recipes"), where["recipes"]),
        trials=_integer(merged["trials"], where["trials"], 1, "the trials per loss, e.g. 8"),
        seeds=_seeds(merged["seeds"], where["seeds"]),
        folds=_integer(merged["folds"], where["folds"], 1, "the validation folds, e.g. 1 or 3"),
        storage=_storage(merged["storage"], where["storage"]),
        out=Path(_text(merged["out"], where["out"], "a folder, e.g. runs/compare")),
        metric=_metric(merged["metric"], where["metric"]),
        pruner=_pruner(merged["pruner"], where["pruner"]),
        sampler_seed=_integer(merged["sampler_seed"], where["sampler_seed"], 0, "e.g. 0"),
        overrides=_overrides(merged["overrides"], where["overrides"]),
        source=source,
    )


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _integer(value: Any, where: str, low: int, example: str) -> int:
    number = _as_int(value)
    if number is None or number < low:
        raise ValueError(f"{where} {value!r}: give a whole number >= {low} ({example})")
    return number


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return None


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    items = _list(value)
    if not items:
        raise ValueError(f"{where}: no seeds; give at least one whole number, e.g. 0 1 2")
    seeds = []
    for item in items:
        seed = _as_int(item)
        if seed is None or seed < 0:
            raise ValueError(
                f"{where} {item!r} is not a seed: give whole numbers >= 0, e.g. --seeds 0 1 2"
            )
        seeds.append(seed)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{where}: seed(s) {repeated} repeated; list each seed once")
    return tuple(seeds)


def _recipes(value: Any, where: str) -> tuple[str, ...]:
    items = [] if value is None else _list(value)
    if not items or any(not isinstance(r, str) or not r.strip() for r in items):
        raise ValueError(
            f"{where} {value!r}: name the recipes to compare (names from `rankedlist recipes` "
            "or YAML paths), e.g. --recipes glyphs glyphs_ms"
        )
    keys = [recipe_key(r) for r in items]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"{where}: recipe(s) {repeated} named twice; list each recipe once")
    return tuple(items)


def recipe_key(recipe: str) -> str:
    """The name of a recipe in the comparison (a path's file name without .yaml)."""
    return Path(recipe).stem if recipe.endswith((".yaml", ".yml")) else Path(recipe).name


def _storage(value: Any, where: str) -> str | None:
    if value is None:
        return None
    return _text(value, where, "a journal file path or a database URL (sqlite:///x.db)")


def _text(value: Any, where: str, what: str) -> str:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} {value!r}: give {what}")
    return value


def _metric(value: Any, where: str) -> str:
    ok = isinstance(value, str) and (
        value in ("map@r", "r_precision")
        or (value.startswith("recall@") and value[7:].isdigit() and int(value[7:]) > 0)
    )
    if not ok:
        raise ValueError(
            f"{where} {value!r} is not a validation metric; use map@r, r_precision or recall@K "
            "(e.g. recall@1)"
        )
    return str(value)


def _pruner(value: Any, where: str) -> str:
    if value not in PRUNERS:
        raise ValueError(f"{where} {value!r} is unknown; choose one of {', '.join(PRUNERS)}")
    return str(value)


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    items = _list(value)
    bad = [o for o in items if not isinstance(o, str) or "=" not in o or o.startswith("=")]
    if bad:
        raise ValueError(
            f"{where}: {bad[0]!r} is not an override; write KEY=VALUE, e.g. train.iterations=300"
        )
    return tuple(items)
