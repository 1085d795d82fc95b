"""A training run's objects and position (what a checkpoint holds), and how they are built."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from rankedlist import __version__
from rankedlist.training import distributed as dist_utils
from rankedlist.training.amp import make_grad_scaler
from rankedlist.training.checkpoint import (
    capture_rng_state,
    checkpoint_health,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from rankedlist.training.config import save_config
from rankedlist.training.config_schema import Config
from rankedlist.training.health import NonFiniteLossError
from rankedlist.training.input_normalisation import (
    NORMALISATION_KEY,
    checkpoint_normalisation,
    model_normalisation,
)
from rankedlist.training.loss_factory import build_loss
from rankedlist.training.optim import build_optimizer, build_scheduler
from rankedlist.training.recipe_data import get_split_dataset, record_skipped_images
from rankedlist.training.resume_config import check_resume_config, record_config_changes
from rankedlist.training.run_folder import CHANGES_FILE, SKIPPED_FILE, RunFolder
from rankedlist.training.run_log import RunLog

__all__ = ["Run", "build_losses", "build_model", "build_run", "start_run"]


@dataclass
class Run:
    """The objects of a training run and its position (what a checkpoint holds)."""

    config: Config
    ctx: dist_utils.DistributedContext
    model: nn.Module  # wrapped in DDP when distributed
    losses: nn.ModuleDict  # one loss per head
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: Any  # the P x K batch sampler (this rank's share)
    batches_per_epoch: int
    train_set: Dataset
    val_set: Dataset | None
    eval_transform: Any
    batch_augment: Any  # augment(images, seeds) of whole training batches, or None
    iteration: int = 0  # optimisation steps done
    epoch: int = 0
    batch: int = 0  # batches of `epoch` done
    best: dict[str, Any] = field(default_factory=dict)  # metric, value, iteration
    saved_at: int | None = None  # iteration of the last full checkpoint written (or resumed)
    saved_path: Path | None = None  # and its file
    folder: RunFolder | None = None  # the run folder's lock, held until the run ends
    # (mean, std) of the imagenet pipeline: the model's own, or a resumed checkpoint's
    input_normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.config.train.run_dir)

    def state_dict(self, weights_only: bool = False) -> dict[str, Any]:
        """What a checkpoint holds. Collective: every rank calls it (RNG states are gathered)."""
        state = {
            "model": dist_utils.unwrap_model(self.model).state_dict(),
            "losses": self.losses.state_dict(),  # proxies of proxy-based losses
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "best": dict(self.best),
            "world_size": self.ctx.world_size,
            "rankedlist_version": __version__,  # the code that made it
        }
        if self.input_normalisation is not None and (
            dist_utils.unwrap_model(self.model).input_style == "imagenet"
        ):
            mean, std = self.input_normalisation
            state[NORMALISATION_KEY] = {"mean": list(mean), "std": list(std)}
        if weights_only:
            return state
        rng = [capture_rng_state()]
        if self.ctx.is_distributed:
            gathered: list[Any] = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        return {
            **state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch,
            "rng": rng,  # one entry per rank
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        dist_utils.unwrap_model(self.model).load_state_dict(state["model"])
        self.losses.load_state_dict(state["losses"])
        # The hyper-parameters as configured now (identical to the saved ones unless a resume
        # changed them on purpose): load_state_dict would bring back the saved ones.
        groups = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        base_lrs = list(self.scheduler.base_lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group, configured in zip(self.optimizer.param_groups, groups, strict=True):
            group.update(configured)
        self.scheduler.base_lrs = base_lrs
        # The rates of the schedule as configured now (train.iterations may have been raised to
        # extend a run); identical to the saved ones when the config is unchanged.
        for group, base, factor in zip(
            self.optimizer.param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base * factor(state["iteration"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.epoch = state["iteration"], state["epoch"]
        self.batch, self.best = state["batch_in_epoch"], dict(state["best"])
        restore_rng_state(state["rng"][self.ctx.rank])
        self.saved_at = self.iteration

    def save(self, name: str = "last.pt", weights_only: bool = False) -> Path:
        """Write a checkpoint on rank 0, atomically; the other ranks wait for it.

        Raises :class:`NonFiniteLossError` on every rank, writing nothing, when the parameters or
        the optimizer state are not finite or have exploded: the previous checkpoint stays the
        last good one.
        """
        path = self.run_dir / name
        problem = checkpoint_health(
            {
                "model": dist_utils.unwrap_model(self.model).state_dict(),
                "losses": self.losses.state_dict(),
                **({} if weights_only else {"optimizer": self.optimizer.state_dict()["state"]}),
            }
        )
        bad = dist_utils.all_reduce_mean(torch.tensor([float(problem is not None)]), self.ctx)
        if bad[0] > 0:
            raise NonFiniteLossError(
                f"{name} not written: {problem or 'another process holds bad values'}"
            )
        state = self.state_dict(weights_only)
        if self.ctx.is_main:
            save_checkpoint(state, path)
        dist_utils.barrier(self.ctx)  # nobody runs ahead of (or reads) a half-written file
        if not weights_only:
            self.saved_at, self.saved_path = self.iteration, path
        return path

    def release_folder(self) -> None:
        """Let another process write the run folder (the run is over, or failed)."""
        if self.folder is not None:
            self.folder.release()

    def load_best_weights(self) -> None:
        """Put ``best.pt``'s weights (the validation's choice) into the model on every rank."""
        weights = load_checkpoint(self.run_dir / "best.pt")["model"] if self.ctx.is_main else None
        dist_utils.unwrap_model(self.model).load_state_dict(
            dist_utils.broadcast_object(weights, self.ctx)
        )


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: Config, load_pretrained: bool = True) -> nn.Module:
    """The recipe's model; ``load_pretrained=False`` when a checkpoint supplies the weights."""
    from rankedlist.models import create_model

    m = config.model
    return create_model(
        m.name,
        embedding_dim=m.embedding_dim,
        pretrained=m.pretrained and load_pretrained,
        pretrained_path=m.pretrained_path if load_pretrained else None,
        pooling=m.pooling,
        freeze_bn=m.freeze_bn,
        multi_level=m.multi_level,
        **m.options,
    )


def build_losses(config: Config, model: nn.Module, num_classes: int, ctx) -> nn.ModuleDict:
    """One loss per head (RLL-(L,M,H) trains each head with its own loss and sums them)."""

    return nn.ModuleDict(
        {
            head: build_loss(
                config.loss.name,
                dict(config.loss.params),
                num_classes=num_classes,
                embedding_dim=model.embedding_dim,
                ctx=ctx,
                memory_size=config.loss.memory_size,
                memory_start=config.loss.memory_start,
            )
            for head in model.head_names
        }
    ).to(ctx.device)


def build_run(
    config: Config,
    ctx: dist_utils.DistributedContext,
    load_pretrained: bool,
    input_normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Run:
    """Model, data, losses, optimiser, schedule and sampler (identical weights on every rank).

    ``input_normalisation``: ``(mean, std)`` of an ``imagenet`` pipeline, a resumed checkpoint's
    (:func:`~rankedlist.training.input_normalisation.checkpoint_normalisation`); None takes the
    model's own."""
    from rankedlist.data import PKSampler, build_batch_augment, build_transform

    t = config.train
    _set_seed(t.seed)
    model = build_model(config, load_pretrained)
    image_size = config.data.image_size or model.input_size
    # The model's own normalisation (its weights' input_mean/input_std) wherever it is fed.
    mean, std = input_normalisation or model_normalisation(model)
    norm = {"mean": mean, "std": std}
    eval_transform = build_transform(model.input_style, False, image_size, **norm)
    # Where a style augments whole batches on tensors (glyphs), the images come in as the test
    # pipeline makes them and the loader augments each batch; else per image, as usual.
    batch_augment = build_batch_augment(model.input_style, train=True)
    train_transform = (
        eval_transform
        if batch_augment
        else build_transform(model.input_style, True, image_size, **norm)
    )
    # Skipped unreadable images are the run's to report (its log, skipped_images.txt).
    train_set = get_split_dataset(config, "train", train_transform, quiet_skips=True)
    val_set = (
        get_split_dataset(config, "val", eval_transform, quiet_skips=True)
        if config.data.val_fraction > 0
        else None
    )
    if config.data.p > len(train_set.classes):
        raise ValueError(
            f"data.p = {config.data.p} classes per batch, but the training split holds only "
            f"{len(train_set.classes)} classes; set data.p to at most {len(train_set.classes)}"
        )
    losses = build_losses(config, model, len(train_set.classes), ctx)
    model = dist_utils.wrap_model(model, ctx)
    optimizer = build_optimizer(model, config.optim, losses.values())
    sampler = PKSampler(
        train_set.labels, config.data.p, config.data.k, seed=t.seed,
        world_size=ctx.world_size, rank=ctx.rank,
    )  # fmt: skip
    sampler.set_epoch(0)
    batches_per_epoch = len(sampler)
    _set_seed(t.seed + ctx.rank)  # per-rank randomness from here on (e.g. dropout)
    return Run(
        config, ctx, model, losses, optimizer,
        scheduler=build_scheduler(optimizer, config.schedule, t.iterations),
        scaler=make_grad_scaler(t.amp, ctx.device),
        sampler=sampler, batches_per_epoch=batches_per_epoch,
        train_set=train_set, val_set=val_set, eval_transform=eval_transform,
        batch_augment=batch_augment,
        best={"metric": t.select_metric, "value": None, "iteration": None},
        input_normalisation=(mean, std),
    )  # fmt: skip


def start_run(
    config: Config,
    ctx: dist_utils.DistributedContext,
    resume: str | Path | None = None,
    overwrite: bool = False,
    allow_config_change: bool = False,
) -> tuple[Run, RunLog]:
    """A new run, or one resumed from a checkpoint, with its folder locked, its log opened and
    its first message written.

    Everything is checked before anything in a folder is deleted or copied: the folder (its
    lock; a run there that is not to be overwritten), the checkpoint and the resume's config,
    then the model, the data and the loss (built, which validates them). ``resume`` from another
    folder than ``train.run_dir`` copies the run into ``train.run_dir`` and continues there.
    """
    folder = RunFolder.claim(config.train.run_dir, ctx, resume, overwrite)
    try:
        checkpoint, changes = _resume_checkpoint(config, ctx, resume, allow_config_change)
        # A resumed run keeps feeding the normalisation its checkpoint's weights learnt with.
        norm = None if checkpoint is None else checkpoint_normalisation(checkpoint, str(resume))
        run = build_run(config, ctx, checkpoint is None, input_normalisation=norm)
        resume = folder.make_ready()
    except BaseException:
        folder.release()
        raise
    run.folder = folder
    if checkpoint is not None:
        run.load_state_dict(checkpoint)
        run.saved_path = Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume)
        del checkpoint
    if ctx.is_main:
        save_config(config, run.run_dir / "config.yaml")
        if changes:
            record_config_changes(run.run_dir, run.iteration, resume, changes)
    dist_utils.barrier(ctx)
    log = RunLog(run)
    if ctx.is_main:
        for split, dataset in (("train", run.train_set), ("val", run.val_set)):
            if note := record_skipped_images(dataset, split, run.run_dir / SKIPPED_FILE):
                log.message(note)
    t = config.train
    if run.iteration:
        log.message(f"resumed from {resume} at iteration {run.iteration}")
        if changes:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
            log.message(f"config changed on resume (recorded in {CHANGES_FILE}): {listed}")
    else:
        log.message(
            f"training {config.model.name} with {config.loss.name} on {config.data.dataset}: "
            f"{len(run.train_set)} images, {len(run.train_set.classes)} classes, batch "
            f"{config.data.p} x {config.data.k}, {t.iterations} iterations, device {ctx.device}"
            + (f" x {ctx.world_size} processes" if ctx.is_distributed else "")
        )
        if run.val_set is None and t.eval_every:
            log.message(
                "no validation split (data.val_fraction = 0): train.eval_every is ignored and "
                "the final iteration is the model"
            )
    return run, log


def _resume_checkpoint(
    config: Config,
    ctx: dist_utils.DistributedContext,
    resume: str | Path | None,
    allow_config_change: bool,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The checkpoint to resume from (None for a new run) and the config changes it allows."""
    if resume is None:
        return None, {}
    checkpoint = load_checkpoint(resume)
    if "optimizer" not in checkpoint:
        raise ValueError(f"{resume} holds model weights only; resume from a run's last.pt")
    if checkpoint["world_size"] != ctx.world_size:
        raise ValueError(
            f"{resume} was written by {checkpoint['world_size']} process(es) but this run has "
            f"{ctx.world_size}: resume with the same world size (torchrun --nproc_per_node)"
        )
    changes = check_resume_config(checkpoint["config"], config, resume, allow_config_change)
    return checkpoint, changes
