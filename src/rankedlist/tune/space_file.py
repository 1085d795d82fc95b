"""Reading a search-space file of ``rankedlist tune`` and parsing each parameter's range.

:func:`read_space_file` checks a YAML file's keys (``loss``, ``replace``, ``parameters``) and its
loss; :func:`parse_param` turns one ``{low, high, ...}`` or ``{choices: [...]}`` spec into a
:class:`Param`, or raises a ``ValueError`` naming the file, the parameter and the problem. Binding
a parameter to a recipe (relative ranges, the ``k`` choices) is :mod:`rankedlist.tune.space`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SPEC_KEYS", "TOP_KEYS", "Param", "parse_param", "read_space_file"]

SPEC_KEYS = ("low", "high", "log", "step", "type", "choices", "relative")
TOP_KEYS = ("loss", "replace", "parameters")


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


def read_space_file(path: Path, loss: str) -> dict[str, Any]:
    """The YAML mapping of the space file ``path``, its keys and its ``loss`` checked."""
    if not path.is_file():
        raise FileNotFoundError(f"search space file {path} not found; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"search space {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"search space {path}: expected a mapping with 'parameters'")
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise ValueError(
            f"search space {path}: unknown key(s) {unknown}; valid keys: {', '.join(TOP_KEYS)}"
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


def parse_param(name: str, spec: Any, where: str) -> Param:
    """The :class:`Param` of ``spec`` (``where``: the file, for messages)."""

    def bad(why: str) -> ValueError:
        return ValueError(f"search space {where}: parameter {name!r}: {why}")

    if not isinstance(spec, Mapping):
        raise bad(f"expected {{low: ..., high: ...}} or {{choices: [...]}}, got {spec!r}")
    unknown = sorted(set(map(str, spec)) - set(SPEC_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {unknown}; valid: {', '.join(SPEC_KEYS)}")
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
