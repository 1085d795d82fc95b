"""The typed training configuration: nested dataclasses, YAML files and ``key=value`` overrides.

A recipe is a YAML file whose top-level sections mirror :class:`Config` (``data``, ``model``,
``loss``, ``optim``, ``schedule``, ``train``). A recipe may start from another one with
``base: other.yaml`` (resolved relative to the file, else a shipped recipe of that name, e.g.
``base: glyphs``) and change only what differs.
Command-line overrides use dotted keys (``optim.lr=3e-3``, ``loss.params.margin=0.2``) and are
coerced to the declared type of the field. Unknown keys raise a ``ValueError`` that lists the valid
keys at that level, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from rankedlist.training.config_schema import (
    Config,
)
from rankedlist.training.recipes import shipped_recipe

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "save_config",
]

# --------------------------------------------------------------------------- building


def config_from_dict(data: Mapping[str, Any] | None) -> Config:
    """Build and validate a :class:`Config` from nested mappings (e.g. a parsed YAML file)."""
    config = _build(Config, data or {}, "")
    return config.validate()


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        where = prefix.rstrip(".") or "the top level"
        raise TypeError(f"config: {where} must be a mapping of keys, got {type(data).__name__}")
    hints = get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            raise _unknown_key(key, prefix, valid)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _unknown_key(key: str, prefix: str, valid: Iterable[str]) -> ValueError:
    where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
    return ValueError(
        f"config: unknown key '{prefix}{key}' in {where}; valid keys: {', '.join(valid)}"
    )


_NONE_WORDS = ("none", "null", "~", "")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the declared type ``tp``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    if origin in (Union, types.UnionType):
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)
        ):
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(errors[0] if len(errors) == 1 else f"config: {key}: " + "; ".join(errors))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise _bad_type(key, value, "a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise _bad_type(key, value, "an integer")
        if isinstance(value, int):
            return value
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip().replace("_", ""))
            except ValueError:
                raise _bad_type(key, value, "an integer") from None
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            return int(number)
        raise _bad_type(key, value, "an integer")
    if tp is float:
        if isinstance(value, bool):
            raise _bad_type(key, value, "a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _bad_type(key, value, "a number") from None
        raise _bad_type(key, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric folder name
        raise _bad_type(key, value, "a string")
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else text.split(",")
            value = [] if value is None else value
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]
        (item_type,) = args or (Any,)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _bad_type(key, value, "a mapping, e.g. {margin: 0.4}")
        return {str(k): _parse_scalar(v) if isinstance(v, str) else v for k, v in value.items()}
    raise TypeError(f"config: {key}: unsupported field type {tp!r}")  # a programming error


def _bad_type(key: str, value: Any, expected: str) -> TypeError:
    return TypeError(f"config: {key} = {value!r} has the wrong type; expected {expected}")


def _parse_scalar(text: str) -> Any:
    """YAML-parse a free-form string; also read ``1e-3`` as a float (YAML 1.1 reads a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# --------------------------------------------------------------------------- overrides


def parse_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """Split ``key=value`` strings; raise ``ValueError`` on a malformed one."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"override '{item}' is not of the form section.key=value (e.g. optim.lr=0.01)"
            )
        pairs.append((key.strip(), value))
    return pairs


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """Return a validated copy of ``config`` with dotted ``key=value`` overrides applied.

    Values are coerced to the field's type. Inside a free-form mapping (``data.options``,
    ``model.options``, ``loss.params``) the key is added or replaced and the value YAML-parsed.
    """
    data = config.to_dict()
    for key, raw in parse_overrides(overrides):
        parts = key.split(".")
        node: dict[str, Any] = data
        cls: Any = Config
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[:depth])
            last = depth == len(parts) - 1
            if cls is None:  # inside a free-form mapping
                if last:
                    node[part] = _parse_scalar(raw)
                else:
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        raise ValueError(f"config: {'.'.join(parts[: depth + 1])} is not a mapping")
                continue
            valid = [f.name for f in dataclasses.fields(cls)]
            if part not in valid:
                raise _unknown_key(part, prefix + "." if prefix else "", valid)
            tp = get_type_hints(cls)[part]
            if dataclasses.is_dataclass(tp):
                if last:
                    raise ValueError(f"config: '{key}' is a section; set one of its keys")
                node, cls = node[part], tp
            elif last:
                node[part] = _coerce(raw, tp, key)
            elif get_origin(tp) is dict or tp is dict:
                node, cls = node[part], None
            else:
                raise ValueError(f"config: '{'.'.join(parts[: depth + 1])}' has no sub-keys")
    return config_from_dict(data)


# --------------------------------------------------------------------------- files


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} not found; `rankedlist recipes` lists the shipped recipes"
        )
    if path.resolve() in seen:
        raise ValueError(f"config: 'base' chain loops back to {path}")
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TypeError(f"config file {path} must hold a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    parent_path = path.parent / str(base)
    if not parent_path.is_file():  # `base: glyphs` names a shipped recipe
        parent_path = shipped_recipe(str(base)) or parent_path
    return _deep_merge(_read_yaml(parent_path, (*seen, path.resolve())), data)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge section by section; inside a section a value (a ``params`` mapping too) is replaced
    whole, so a child recipe that changes the loss does not inherit the parent's loss params."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML recipe (or start from the defaults when ``path`` is None) and apply overrides.

    ``path`` is a file or a recipe name (``"glyphs"``), found as ``rankedlist train --config``
    finds it: ``./configs`` first, then the shipped recipes
    (:func:`~rankedlist.training.recipes.find_recipe`).
    """
    from rankedlist.training.recipes import find_recipe

    data = _read_yaml(find_recipe(path)) if path is not None else {}
    return apply_overrides(config_from_dict(data), list(overrides))


def save_config(config: Config, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (what ``rankedlist train --config`` reads back)."""
    from rankedlist import __version__
    from rankedlist.atomic_write import atomic_write_text

    # The version as a comment: the file stays a recipe that `--config` reads back.
    header = f"# written by rankedlist {__version__}\n"
    return atomic_write_text(path, header + yaml.safe_dump(config.to_dict(), sort_keys=False))
