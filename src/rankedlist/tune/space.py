"""Search spaces of ``rankedlist tune``: one shipped per loss, a ``--space`` file overrides them.

A space is YAML (``rankedlist/tune/spaces/<loss>.yaml``)::

    loss: rll                      # optional; must be the recipe's loss.name
    replace: false                 # optional; true: this file is the whole space
    parameters:
      lr:     {low: 0.2, high: 5.0, log: true, relative: true}   # x the recipe's optim.lr
      margin: {low: 0.1, high: 0.8}
      gap:    {low: 0.3, high: 1.3}          # loss.params.alpha = margin + gap
      k:      {choices: [2, 3, 4, 6, 8]}     # data.k; data.p = (the recipe's p x k) / k
      optim.weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}   # any config key

Parameter names: ``lr`` (``optim.lr``), ``k`` (the P/K split of the recipe's batch size: the
choices that divide it, leaving p >= 2, are kept, and of those the ones whose P = batch / k fits
the classes of the search's training split; the others are left out with a note), ``gap`` (RLL
only: ``alpha = margin + gap``, the positive boundary; not together with ``alpha``), any parameter
of the loss (``margin``, ``Tn``, ... go to ``loss.params``; the loss factory's names), or any
dotted config key. A range is ``{low, high}`` (floats; ``type: int`` for integers) with optional
``log`` and ``step``, or ``{choices: [...]}``; ``relative: true`` multiplies the range by the
recipe's value. A ``--space`` file replaces the shipped range of each parameter it names, adds the
others, and ``name: null`` drops one. An unknown parameter or a bad range is a ``ValueError``
naming it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from rankedlist.training.config import Config, apply_overrides

__all__ = ["Param", "SearchSpace", "load_space", "shipped_space_path", "held_out_text"]

_SPEC_KEYS = ("low", "high", "log", "step", "type", "choices", "relative")
_TOP_KEYS = ("loss", "replace", "parameters")
_ALIASES = {"lr": "optim.lr"}


@dataclass(frozen=True)
class Param:
    """One searched parameter: a float/int range or a list of choices."""

    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def ends(self) -> list[Any]:
        """The values to check before searching: both ends, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        text = f"[{self.low:g}, {self.high:g}]"
        if self.kind == "int":
            text += " integers"
        if self.log:
            text += " log"
        if self.step:
            text += f" step {self.step:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.kind == "int":
            out["type"] = "int"
        if self.log:
            out["log"] = True
        if self.step:
            out["step"] = self.step
        return out


@dataclass
class SearchSpace:
    """The parameters of a study, bound to a recipe (relative ranges resolved, k filtered)."""

    loss: str
    params: dict[str, Param]
    source: str
    notes: tuple[str, ...] = ()

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` for every parameter (in the space's order)."""
        return {name: p.suggest(trial) for name, p in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "parameters": {n: p.to_dict() for n, p in self.params.items()}}

    def describe(self) -> dict[str, str]:
        """Parameter -> "the config key(s) it sets: its range" for the report and the docs."""
        return {n: f"`{_target_text(n)}`: {p.describe()}" for n, p in self.params.items()}


def shipped_space_path(loss: str) -> Path:
    """The shipped space of ``loss`` (``rankedlist/tune/spaces/<loss>.yaml``)."""
    from importlib.resources import files

    return Path(str(files("rankedlist.tune") / "spaces" / f"{loss}.yaml"))


def load_space(
    config: Config,
    path: str | Path | None = None,
    train_classes: Callable[[], int] | int | None = None,
) -> SearchSpace:
    """The shipped space of the recipe's loss, overridden by ``path``, bound to ``config``.

    ``train_classes``: the number of classes of the training split the trials train on (or a
    function that counts them, called only when ``k`` is searched); the ``k`` choices whose
    P = batch / k exceeds it are left out. None: not checked.

    Raises:
        ValueError: an unknown parameter, a bad range, a range the recipe or the loss rejects
            (checked at both ends), no ``k`` choice that fits, or no shipped space for the loss
            and no ``path``.
        FileNotFoundError: ``path`` does not exist.
    """
    loss = config.loss.name
    shipped = shipped_space_path(loss)
    raw: dict[str, Any] = {}
    sources = []
    if shipped.is_file():
        raw = _read(shipped, loss)["parameters"]
        sources.append(f"shipped {shipped.name}")
    if path is not None:
        user = _read(Path(path), loss)
        raw = {} if user.get("replace") else dict(raw)
        for name, spec in user["parameters"].items():
            if spec is None:
                raw.pop(name, None)
            else:
                raw[name] = spec
        sources.append(f"{'' if user.get('replace') else 'overridden by '}{path}")
    elif not shipped.is_file():
        raise ValueError(
            f"no shipped search space for loss {loss!r}; write one and pass --space FILE "
            f"(see rankedlist/tune/spaces/*.yaml for the format)"
        )
    where = str(path) if path is not None else str(shipped)
    if not raw:
        raise ValueError(f"search space {where}: no parameters left to search; name at least one")
    valid = _valid_names(loss)
    params, notes = {}, []
    for name, spec in raw.items():
        if name not in valid and "." not in str(name):
            raise ValueError(
                f"search space {where}: unknown parameter {name!r} for loss {loss!r}; valid: "
                f"{', '.join(valid)}, or a dotted config key such as optim.weight_decay"
            )
        param = _parse(str(name), spec, where)
        param, bound_notes = _bind(param, spec, config, where, train_classes)
        params[str(name)] = param
        notes += bound_notes
    if "gap" in params and "alpha" in params:
        raise ValueError(
            f"search space {where}: 'gap' (alpha = margin + gap) and 'alpha' are both searched; "
            "drop one (e.g. `alpha: null` in the --space file)"
        )
    space = SearchSpace(loss, params, " + ".join(sources), tuple(notes))
    _check_ends(space, config, where)
    return space


def values_to_overrides(space: SearchSpace, values: Mapping[str, Any], config: Config) -> list[str]:
    """The ``key=value`` overrides that put a trial's values into the recipe."""
    out = []
    for name, value in values.items():
        if name == "k":
            batch = config.data.p * config.data.k
            out += [f"data.k={value}", f"data.p={batch // int(value)}"]
        elif name == "gap":
            margin = values.get("margin", config.loss.params.get("margin", _default_margin()))
            out.append(f"loss.params.alpha={_fmt(float(margin) + float(value))}")
        else:
            out.append(f"{_target_text(name)}={_fmt(value)}")
    return out


# --------------------------------------------------------------------------- parsing


def _read(path: Path, loss: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"search space file {path} not found; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"search space {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"search space {path}: expected a mapping with 'parameters'")
    unknown = sorted(set(map(str, data)) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(
            f"search space {path}: unknown key(s) {unknown}; valid keys: {', '.join(_TOP_KEYS)}"
        )
    if data.get("loss") not in (None, loss):
        raise ValueError(
            f"search space {path} is for loss {data['loss']!r} but the recipe trains {loss!r}; "
            f"pass a space for {loss!r} (or drop its 'loss:' line)"
        )
    params = data.get("parameters")
    if not isinstance(params, dict):
        raise ValueError(f"search space {path}: 'parameters' must be a mapping of name: range")
    if not isinstance(data.get("replace", False), bool):
        raise ValueError(f"search space {path}: 'replace' must be true or false")
    return data


def _valid_names(loss: str) -> list[str]:
    from rankedlist.training.loss_factory import valid_params

    names = ["lr", "k"] + (["gap"] if loss == "rll" else [])
    return names + [n for n in valid_params(loss) if n not in names]


def _parse(name: str, spec: Any, where: str) -> Param:
    def bad(why: str) -> ValueError:
        return ValueError(f"search space {where}: parameter {name!r}: {why}")

    if not isinstance(spec, Mapping):
        raise bad(f"expected {{low: ..., high: ...}} or {{choices: [...]}}, got {spec!r}")
    unknown = sorted(set(map(str, spec)) - set(_SPEC_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {unknown}; valid: {', '.join(_SPEC_KEYS)}")
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise bad(f"choices cannot be combined with {extra}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise bad(f"choices must be a non-empty list, got {choices!r}")
        if any(not isinstance(c, (int, float, str, bool)) for c in choices):
            raise bad(f"choices must be numbers, strings or booleans, got {choices!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise bad(f"choices {choices} repeat a value")
        return Param(name, "categorical", choices=tuple(choices))
    if name == "k":
        raise bad("takes choices, e.g. {choices: [2, 4, 8]} (images per class; p = batch / k)")
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        raise bad(f"type must be float or int, got {kind!r}")
    for key in ("low", "high"):
        value = spec.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad(f"{key} must be a finite number, got {value!r}")
        if kind == "int" and not float(value).is_integer():
            raise bad(f"{key} = {value!r} is not an integer (type: int)")
    low, high, step = spec["low"], spec["high"], spec.get("step")
    log = spec.get("log", False)
    if not isinstance(log, bool) or not isinstance(spec.get("relative", False), bool):
        raise bad("log and relative must be true or false")
    if not low < high:
        raise bad(f"bad range: low {low!r} must be below high {high!r}")
    if log and low <= 0:
        raise bad(f"bad range: a log range needs low > 0, got {low!r}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise bad(f"step must be a number > 0, got {step!r}")
        if log:
            raise bad("step and log cannot be combined")
        if step > high - low:
            raise bad(f"step {step!r} is larger than the range [{low!r}, {high!r}]")
    number = int if kind == "int" else float
    return Param(name, kind, number(low), number(high), log, None if step is None else number(step))


def _bind(
    param: Param,
    spec: Mapping[str, Any],
    config: Config,
    where: str,
    train_classes: Callable[[], int] | int | None = None,
) -> tuple[Param, list[str]]:
    """Resolve a relative range against the recipe; keep the k choices that fit the batch and
    the classes of the training split."""
    notes = []
    if spec.get("relative"):
        if param.kind == "categorical" or param.name in ("k", "gap"):
            raise ValueError(
                f"search space {where}: parameter {param.name!r}: relative works with a "
                "{low, high} range of a value the recipe sets"
            )
        base = _recipe_value(config, _target_text(param.name))
        if isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 0:
            raise ValueError(
                f"search space {where}: parameter {param.name!r} is relative but the recipe's "
                f"{_target_text(param.name)} is {base!r}; set it in the recipe or give an "
                "absolute range"
            )
        low, high = param.low * base, param.high * base
        if param.kind == "int":
            low, high = math.ceil(low), math.floor(high)
        param = replace(param, low=low, high=high, step=None if not param.step else param.step)
        notes.append(f"{param.name}: relative range x the recipe's {base:g}")
    if param.name == "k":
        batch = config.data.p * config.data.k
        fits = [c for c in param.choices if _divides(c, batch)]
        if not fits:
            raise ValueError(
                f"search space {where}: parameter 'k': none of the choices {list(param.choices)} "
                f"splits the recipe's batch of {batch} (data.p x data.k) into p >= 2 classes of "
                "k images; choose divisors of it"
            )
        if len(fits) < len(param.choices):
            dropped = [c for c in param.choices if c not in fits]
            notes.append(f"k: choices {dropped} do not divide the batch of {batch}; left out")
        if train_classes is not None:
            classes = train_classes() if callable(train_classes) else int(train_classes)
            too_many = [c for c in fits if batch // c > classes]
            if too_many:
                need = (
                    f"P = {batch} / k = {[batch // c for c in too_many]} classes per batch, but "
                    f"the search's training split holds only {classes} classes"
                    f"{held_out_text(config)}"
                )
                fits = [c for c in fits if c not in too_many]
                if not fits:
                    raise ValueError(
                        f"search space {where}: parameter 'k': the choices {too_many} that split "
                        f"the batch of {batch} need {need}; add choices of k >= "
                        f"{math.ceil(batch / classes)} (k divides {batch}), lower the batch "
                        "(data.p) or lower data.val_fraction"
                    )
                notes.append(f"k: choices {too_many} left out: they need {need}")
        param = replace(param, choices=tuple(fits))
    return param, notes


def held_out_text(config: Config) -> str:
    """Why the search's training split has fewer classes than the recipe's, for messages."""
    fraction = config.data.val_fraction
    if not fraction:
        return ""
    return f" (the training classes less the data.val_fraction {fraction:g} held out for val)"


def _divides(choice: Any, batch: int) -> bool:
    return (
        isinstance(choice, int) and not isinstance(choice, bool) and choice >= 1
        and batch % choice == 0 and batch // choice >= 2
    )  # fmt: skip


def _check_ends(space: SearchSpace, config: Config, where: str) -> None:
    """Build the recipe and the loss at each end of each range (alone, then all together)."""
    checks = [({name: end}, f"parameter {name!r} = {end!r}") for name, p in space.params.items()
              for end in p.ends()]  # fmt: skip
    for i, what in ((0, "low"), (-1, "high")):
        together = {n: p.ends()[i] for n, p in space.params.items()}
        checks.append((together, f"the {what} ends together ({together})"))
    for values, what in checks:
        problem = _build_problem(space, values, config)
        if problem:
            raise ValueError(f"search space {where}: {what} is rejected: {problem}; narrow it")


def _build_problem(space: SearchSpace, values: Mapping[str, Any], config: Config) -> str | None:
    from rankedlist.training.loss_factory import build_loss

    try:
        trial_config = apply_overrides(config, values_to_overrides(space, values, config))
        build_loss(
            trial_config.loss.name,
            dict(trial_config.loss.params),
            num_classes=2,
            embedding_dim=trial_config.model.embedding_dim,
        )
    except (TypeError, ValueError) as exc:
        return " ".join(str(exc).split())
    return None


def _target_text(name: str) -> str:
    if name == "k":
        return "data.k, data.p"
    if name == "gap":
        return "loss.params.alpha - margin"
    if "." in name:
        return name
    return _ALIASES.get(name, f"loss.params.{name}")


def _recipe_value(config: Config, key: str) -> Any:
    node: Any = config.to_dict()
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _default_margin() -> float:
    from rankedlist.losses import RankedListLoss

    return float(inspect.signature(RankedListLoss).parameters["margin"].default)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)
