"""The typed training configuration: one dataclass per recipe section, validated as a whole.

How recipes become these objects (YAML files, ``base:`` recipes, ``key=value`` overrides) is
:mod:`rankedlist.training.config`, which also re-exports every name here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AMP_MODES",
    "OPTIMIZERS",
    "SCHEDULES",
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")


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
    # Cross-batch memory rows (XBM); 0: off. As in the XBM paper and PML's CrossBatchMemory the
    # memory holds the current batch too: once full, a batch of B rows is ranked against itself
    # and the newest memory_size - B rows of earlier batches (min(memory_size, rows seen) in all,
    # for RLL and the PML baselines alike), so it must be at least the global batch data.p * data.k.
    memory_size: int = 0
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
            ">= 0, or null for the default (0 on the CPU, per core on a GPU)",
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
        # The losses that take a memory are the factory's records: one list, one check.
        from rankedlist.training.loss_factory import check_takes_memory

        check_takes_memory(loss.name, loss.memory_size)
        _check(
            loss.memory_size >= d.p * d.k,
            "loss.memory_size",
            loss.memory_size,
            f"0 or at least the global batch data.p * data.k = {d.p * d.k}",
        )


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"config: {key} = {value!r} is invalid; expected {expected}")
