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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from rankedlist.training.recipes import shipped_recipes_dir

__all__ = [
    "MEMORY_LOSSES",
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "save_config",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")
# Losses that can rank against a cross-batch memory (RLL's own; PML's CrossBatchMemory for the
# pairings of the XBM paper). Proxy-based and the remaining baselines cannot.
MEMORY_LOSSES = ("rll", "contrastive", "multi_similarity")


@dataclass
class DataConfig:
    """Which dataset, how batches are drawn, and how it is split."""

    dataset: str = "glyphs"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extra get_dataset(**options)
    p: int = 32  # classes per batch
    k: int = 4  # images per class
    image_size: int | None = None  # None: the model's input_size
    val_fraction: float = 0.0  # share of the training classes held out for model selection
    num_workers: int | None = None  # data-loader workers; None: 0 on a CPU device, else per core


@dataclass
class ModelConfig:
    """Arguments of :func:`rankedlist.models.create_model`."""

    name: str = "glyphnet"
    embedding_dim: int = 128
    pretrained: bool = False
    pretrained_path: str | None = None
    pooling: str = "avg"
    freeze_bn: bool = False
    multi_level: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # extra create_model(**options)


@dataclass
class LossConfig:
    """A loss name from the loss factory and its parameters (validated by the factory)."""

    name: str = "rll"
    params: dict[str, Any] = field(default_factory=dict)
    memory_size: int = 0  # cross-batch memory rows (XBM); 0: off
    memory_start: int = 0  # iterations before the memory is filled and used (XBM's warm-up)


@dataclass
class OptimConfig:
    """Optimiser and its parameter groups."""

    name: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    lr_multiplier: float = 1.0  # new layers (embedding heads) get lr * lr_multiplier
    loss_lr_multiplier: float = 1.0  # loss parameters (proxies) get lr * loss_lr_multiplier
    clip_grad_norm: float | None = None  # None: no clipping


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over iterations (not epochs)."""

    name: str = "constant"
    milestones: list[int] = field(default_factory=list)  # multistep
    gamma: float = 0.1  # multistep factor
    warmup_iters: int = 0  # linear warm-up from warmup_factor * lr
    warmup_factor: float = 0.01
    min_lr_factor: float = 0.0  # cosine ends at lr * min_lr_factor


@dataclass
class TrainConfig:
    """The loop: budget, evaluation, checkpoints, precision, devices, output."""

    iterations: int = 1000
    eval_every: int = 0  # 0: no periodic validation (needs data.val_fraction > 0)
    checkpoint_every: int = 0  # 0: only at the end (and on SIGINT/SIGTERM)
    log_every: int = 10
    amp: str = "none"  # none | bf16 | fp16
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    protocol: str | None = None  # evaluation protocol; None: the dataset's name
    select_metric: str = "recall@1"  # validation metric that picks best.pt (higher is better)
    run_dir: str = "runs/default"
    eval_batch_size: int = 256
    num_threads: int | None = None  # torch.set_num_threads for CPU runs
    deterministic: bool = False  # torch.use_deterministic_algorithms
    tensorboard: bool = True
    report: bool = True  # write report.md, metrics.json and the pictures at the end


@dataclass
class Config:
    """A full recipe. ``description`` is the one line ``rankedlist recipes`` prints."""

    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-serialisable copy."""
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check value ranges and choices; raise ``ValueError`` naming the key and the fix."""
        d, o, s, t = self.data, self.optim, self.schedule, self.train
        _check(d.p >= 2, "data.p", d.p, "an integer >= 2 (classes per batch)")
        _check(d.k >= 1, "data.k", d.k, "an integer >= 1 (images per class)")
        _check(d.image_size is None or d.image_size > 0, "data.image_size", d.image_size, "> 0")
        _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "in [0, 1)")
        _check(
            d.num_workers is None or d.num_workers >= 0,
            "data.num_workers",
            d.num_workers,
            ">= 0, or null for one per available core but one",
        )
        _check(self.model.embedding_dim > 0, "model.embedding_dim", self.model.embedding_dim, "> 0")
        self._validate_memory()
        _check(o.name in OPTIMIZERS, "optim.name", o.name, f"one of {OPTIMIZERS}")
        _check(o.lr > 0, "optim.lr", o.lr, "> 0")
        _check(0.0 <= o.momentum < 1.0, "optim.momentum", o.momentum, "in [0, 1)")
        _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
        _check(o.lr_multiplier > 0, "optim.lr_multiplier", o.lr_multiplier, "> 0")
        _check(o.loss_lr_multiplier > 0, "optim.loss_lr_multiplier", o.loss_lr_multiplier, "> 0")
        _check(
            o.clip_grad_norm is None or o.clip_grad_norm > 0,
            "optim.clip_grad_norm",
            o.clip_grad_norm,
            "> 0, or null for no clipping",
        )
        _check(s.name in SCHEDULES, "schedule.name", s.name, f"one of {SCHEDULES}")
        _check(
            all(m > 0 for m in s.milestones) and s.milestones == sorted(set(s.milestones)),
            "schedule.milestones",
            s.milestones,
            "strictly increasing positive iterations",
        )
        _check(s.gamma > 0, "schedule.gamma", s.gamma, "> 0")
        _check(s.warmup_iters >= 0, "schedule.warmup_iters", s.warmup_iters, ">= 0")
        _check(0 < s.warmup_factor <= 1, "schedule.warmup_factor", s.warmup_factor, "in (0, 1]")
        _check(0 <= s.min_lr_factor <= 1, "schedule.min_lr_factor", s.min_lr_factor, "in [0, 1]")
        _check(t.iterations >= 1, "train.iterations", t.iterations, ">= 1")
        _check(t.eval_every >= 0, "train.eval_every", t.eval_every, ">= 0 (0 disables)")
        _check(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, ">= 0")
        _check(t.log_every >= 1, "train.log_every", t.log_every, ">= 1")
        _check(t.amp in AMP_MODES, "train.amp", t.amp, f"one of {AMP_MODES}")
        _check(
            t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
            "train.device",
            t.device,
            "auto, cpu, cuda or cuda:N",
        )
        _check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, ">= 1")
        _check(
            t.num_threads is None or t.num_threads >= 1, "train.num_threads", t.num_threads, ">= 1"
        )
        _check(bool(t.run_dir), "train.run_dir", t.run_dir, "a folder path")
        return self

    def _validate_memory(self) -> None:
        loss, d = self.loss, self.data
        _check(loss.memory_size >= 0, "loss.memory_size", loss.memory_size, ">= 0 (0: no memory)")
        _check(loss.memory_start >= 0, "loss.memory_start", loss.memory_start, ">= 0 iterations")
        if loss.memory_size == 0:
            return
        _check(
            loss.name in MEMORY_LOSSES,
            "loss.memory_size",
            loss.memory_size,
            f"0: loss {loss.name!r} cannot rank against a memory (one of {MEMORY_LOSSES} can)",
        )
        _check(
            loss.memory_size >= d.p * d.k,
            "loss.memory_size",
            loss.memory_size,
            f"0 or at least the global batch data.p * data.k = {d.p * d.k}",
        )


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"config: {key} = {value!r} is invalid; expected {expected}")


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
        shipped = shipped_recipes_dir()
        for candidate in (shipped / str(base), shipped / f"{base}.yaml"):
            if candidate.is_file():
                parent_path = candidate
                break
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
    """Read a YAML recipe (or start from the defaults when ``path`` is None) and apply overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    return apply_overrides(config_from_dict(data), list(overrides))


def save_config(config: Config, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (what ``rankedlist train --config`` reads back)."""
    from rankedlist import __version__
    from rankedlist.atomic_write import atomic_write_text

    # The version as a comment: the file stays a recipe that `--config` reads back.
    header = f"# written by rankedlist {__version__}\n"
    return atomic_write_text(path, header + yaml.safe_dump(config.to_dict(), sort_keys=False))
