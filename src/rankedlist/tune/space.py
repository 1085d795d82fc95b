"""Search spaces of ``rankedlist tune``: the shared dimensions, each loss's own, a ``--space`` file.

Every loss searches the same shared dimensions (:data:`SHARED_DIMENSIONS`, defined here once, so
that losses compared on one recipe get the same budget over them) plus its own hyper-parameters,
shipped in ``rankedlist/tune/spaces/<loss>.yaml``::

    loss: rll                      # optional; must be the recipe's loss.name
    replace: false                 # optional; true: this file is the whole space (no shared ones)
    parameters:
      margin: {low: 0.1, high: 0.8}
      gap:    {low: 0.3, high: 1.3}          # loss.params.alpha = margin + gap
      optim.weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}   # any config key

The shared dimensions: ``lr`` (``optim.lr``, ``{low: 0.2, high: 5.0, log: true, relative:
true}``: 0.2 to 5 times the recipe's) and ``k`` (``{choices: [2, 3, 4, 6, 8]}``: the P/K split
of the recipe's batch size, ``data.p = batch / k``; the choices that divide it, leaving p >= 2,
are kept, and of those the ones whose P fits the classes of the search's training split; the
others are left out with a note, and when none is left the shared ``k`` is not searched, the
recipe's own split stays).

Parameter names: ``lr``, ``k``, ``gap`` (RLL only: ``alpha = margin + gap``, the positive
boundary; not together with ``alpha``), any parameter of the loss (``margin``, ``Tn``, ... go to
``loss.params``; the loss factory's names), or any dotted config key. A range is ``{low, high}``
(floats; ``type: int`` for integers) with optional ``log`` and ``step``, or ``{choices: [...]}``;
``relative: true`` multiplies the range by the recipe's value. A ``--space`` file replaces the
range of each parameter it names (shared or the loss's own), adds the others, and ``name: null``
drops one; ``replace: true`` makes it the whole space. An unknown parameter or a bad range is a
``ValueError`` naming it. :func:`describe_space` gives a bound space as plain values for reports.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rankedlist.training.config import apply_overrides
from rankedlist.training.config_schema import Config
from rankedlist.tune.space_file import Param, parse_param, read_space_file

__all__ = [
    "SHARED_DIMENSIONS",
    "SearchSpace",
    "describe_space",
    "held_out_text",
    "load_space",
    "shipped_space_path",
]

#: The dimensions every loss searches, with the same spec (the YAML form of a ``--space`` file):
#: the learning rate, 0.2 to 5 times the recipe's ``optim.lr`` on a log scale, and the images per
#: class ``k`` of the recipe's batch (``data.p = batch / k``; filtered to what the data allows).
#: The shipped spaces hold only each loss's own parameters; a ``--space`` file may override these.
SHARED_DIMENSIONS: Mapping[str, Mapping[str, Any]] = {
    "lr": {"low": 0.2, "high": 5.0, "log": True, "relative": True},
    "k": {"choices": [2, 3, 4, 6, 8]},
}

_ALIASES = {"lr": "optim.lr"}


@dataclass
class SearchSpace:
    """The parameters of a study, bound to a recipe (relative ranges resolved, k filtered).

    ``specs``: each parameter's spec as written (before binding); ``shared``: the parameters
    searched with the spec of :data:`SHARED_DIMENSIONS` (not overridden by a ``--space`` file)."""

    loss: str
    params: dict[str, Param]
    source: str
    notes: tuple[str, ...] = ()
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: tuple[str, ...] = ()

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
            (checked at both ends), no choice of a ``k`` of ``path`` that fits (the shared ``k``
            is left out instead), or no shipped space for the loss and no ``path``.
        FileNotFoundError: ``path`` does not exist.
    """
    loss = config.loss.name
    shipped = shipped_space_path(loss)
    raw: dict[str, Any] = {
        name: copy.deepcopy(dict(spec)) for name, spec in SHARED_DIMENSIONS.items()
    }
    sources = []
    if shipped.is_file():
        raw.update(read_space_file(shipped, loss)["parameters"])
        sources.append(f"shipped {shipped.name}")
    if path is not None:
        user = read_space_file(Path(path), loss)
        if user.get("replace"):
            raw, sources = {}, []
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
    shared = [name for name in SHARED_DIMENSIONS if name in raw and _is_shared(name, raw[name])]
    if shared:
        sources.insert(0, f"the shared {', '.join(shared)}")
    where = str(path) if path is not None else str(shipped)
    if not raw:
        raise ValueError(f"search space {where}: no parameters left to search; name at least one")
    valid = _valid_names(loss)
    params, notes, specs = {}, [], {}
    for name, spec in raw.items():
        if name not in valid and "." not in str(name):
            raise ValueError(
                f"search space {where}: unknown parameter {name!r} for loss {loss!r}; valid: "
                f"{', '.join(valid)}, or a dotted config key such as optim.weight_decay"
            )
        param = parse_param(str(name), spec, where)
        if name in shared:
            param, bound_notes = _bind_shared(param, spec, config, where, train_classes)
        else:
            param, bound_notes = _bind(param, spec, config, where, train_classes)
        notes += bound_notes
        if param is None:  # a shared dimension the data does not allow: not searched
            continue
        params[str(name)] = param
        specs[str(name)] = _plain(spec)
    if "gap" in params and "alpha" in params:
        raise ValueError(
            f"search space {where}: 'gap' (alpha = margin + gap) and 'alpha' are both searched; "
            "drop one (e.g. `alpha: null` in the --space file)"
        )
    space = SearchSpace(
        loss,
        params,
        " + ".join(sources),
        tuple(notes),
        specs=specs,
        shared=tuple(n for n in params if n in shared),
    )
    _check_ends(space, config, where)
    return space


def describe_space(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """Each searched parameter as plain JSON-able values, for reports and comparisons::

        {"lr": {"sets": "optim.lr", "shared": True, "kind": "float", "low": 0.0004,
                "high": 0.01, "log": True,
                "spec": {"low": 0.2, "high": 5.0, "log": True, "relative": True}}, ...}

    ``sets``: the config key(s) it sets; ``shared``: searched with the spec of
    :data:`SHARED_DIMENSIONS`; ``kind``, ``low``/``high``/``log``/``step`` or ``choices``: the
    range bound to the recipe (relative ranges resolved, ``k`` filtered); ``spec``: as written.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, param in space.params.items():
        entry: dict[str, Any] = {
            "sets": _target_text(name),
            "shared": name in space.shared,
            "kind": param.kind,
            **param.to_dict(),
        }
        entry.pop("type", None)
        if param.kind != "categorical":
            entry.setdefault("log", False)
        entry["spec"] = copy.deepcopy(space.specs.get(name, param.to_dict()))
        out[name] = entry
    return out


def _is_shared(name: str, spec: Any) -> bool:
    """Whether ``spec`` is the spec of the shared dimension ``name``."""
    return isinstance(spec, Mapping) and _plain(spec) == _plain(SHARED_DIMENSIONS[name])


def _plain(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A spec as plain JSON-able values (lists, not tuples)."""
    return {str(k): list(v) if isinstance(v, (list, tuple)) else v for k, v in dict(spec).items()}


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


def _valid_names(loss: str) -> list[str]:
    from rankedlist.training.loss_factory import valid_params

    names = list(SHARED_DIMENSIONS) + (["gap"] if loss == "rll" else [])
    return names + [n for n in valid_params(loss) if n not in names]


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


def _bind_shared(
    param: Param,
    spec: Mapping[str, Any],
    config: Config,
    where: str,
    train_classes: Callable[[], int] | int | None = None,
) -> tuple[Param | None, list[str]]:
    """:func:`_bind` for a dimension of :data:`SHARED_DIMENSIONS`: a ``k`` with no choice the
    batch and the data allow is left out (the recipe's own split stays) instead of an error, so
    that the shared dimensions never stop a loss's search that the recipe allows."""
    try:
        return _bind(param, spec, config, where, train_classes)
    except ValueError as exc:
        if param.name != "k":
            raise
        why = " ".join(str(exc).split()).split("parameter 'k': ", 1)[-1].split("; ")[0]
        return None, [
            f"k: not searched ({why}); the recipe's data.p={config.data.p}, "
            f"data.k={config.data.k} stay"
        ]


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
