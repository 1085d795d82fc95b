"""Training: ``main(config)`` turns a recipe into a trained model, its test metrics and a report.

The file reads top to bottom, in the style of torchvision's reference scripts:

1. data: datasets by split, an endless P x K batch stream that resumes at the exact batch;
2. ``train_one_step``: forward under autocast, one loss per head summed, backward, clip, step;
3. ``extract_embeddings`` / ``evaluate``: fused and per-head embeddings, the evaluation's metrics;
4. ``Run`` (the objects and position of a run, what a checkpoint holds) and ``RunLog``
   (``metrics.jsonl``, TensorBoard, a progress bar or log lines);
5. ``build_run``, ``validate`` (best checkpoint on the val split), ``train_loop`` (iterations,
   checkpoints, signals), ``test_and_report`` (the test split once, the report) and ``main``;
6. ``evaluate_checkpoint``: re-evaluate a saved model.

Every sample's augmentation is seeded from (seed, epoch, batch, position in the global batch), not
drawn from a shared stream, so a resumed run sees exactly the images an uninterrupted one would,
whatever the number of data-loader workers or processes. Logging, checkpoints and the report
happen on rank 0 only; every collective (stop flags, RNG gathering, evaluation) runs on all ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from rankedlist import __version__
from rankedlist.atomic_write import atomic_write_text, remove_orphan_temporaries
from rankedlist.training import distributed as dist_utils
from rankedlist.training.amp import autocast, make_grad_scaler
from rankedlist.training.checkpoint import (
    EXPLODED,
    capture_rng_state,
    checkpoint_health,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from rankedlist.training.config import Config, config_from_dict, save_config
from rankedlist.training.health import NonFiniteLossError, divergence_message, is_healthy, max_abs
from rankedlist.training.optim import build_optimizer, build_scheduler
from rankedlist.training.run_folder import (
    CHANGES_FILE,
    RunExistsError,
    check_resume_config,
    existing_run_files,
    record_config_changes,
    refuse_existing_run,
    remove_run,
)

__all__ = [
    "NonFiniteLossError",
    "Run",
    "RunExistsError",
    "RunInterrupted",
    "TrainResult",
    "build_run",
    "evaluate",
    "evaluate_checkpoint",
    "extract_embeddings",
    "format_metrics_table",
    "main",
    "test_and_report",
    "train_loop",
    "train_one_step",
    "validate",
]

FUSED = "fused"


@dataclass
class TrainResult:
    """What :func:`main` returns.

    ``status`` is ``"completed"``, ``"interrupted"`` (a signal; a checkpoint was saved) or
    ``"stopped"`` (``stop_after`` reached; a checkpoint was saved). ``test_metrics`` maps
    ``"fused"`` and each head name to the evaluation's flat metric dict (empty unless completed).
    """

    run_dir: Path
    status: str
    iteration: int
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    report_files: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    signal: int | None = None


# =========================================================================== 1. data


def _protocol(config: Config) -> str:
    from rankedlist.evaluation import PROTOCOLS

    name = config.train.protocol or config.data.dataset
    if name in PROTOCOLS:
        return name
    if config.train.protocol is not None:
        raise ValueError(f"train.protocol = {name!r} is unknown; choose one of {sorted(PROTOCOLS)}")
    return "default"


def _get_dataset(config: Config, split: str, transform: Any) -> Dataset:
    from rankedlist.data import get_dataset

    options = dict(config.data.options)
    options.setdefault("val_fraction", config.data.val_fraction)
    if config.data.dataset == "glyphs" and config.data.image_size is not None:
        options.setdefault("image_size", config.data.image_size)  # render at the input size
    return get_dataset(
        config.data.dataset, root=config.data.root, split=split, transform=transform, **options
    )


def _eval_splits(config: Config, split: str) -> tuple[str, str | None]:
    """(query split, gallery split or None when the queries are their own gallery)."""
    from rankedlist.data import evaluation_splits

    splits = evaluation_splits(config.data.dataset) if split == "test" else (split,)
    return splits[0], (splits[1] if len(splits) > 1 else None)


def _sample_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers (splitmix64 steps; cheap per sample)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x >> 1


class SeededSamples(Dataset):
    """Wraps a dataset so ``dataset[(index, seed)]`` transforms sample ``index`` under ``seed``.

    torch's generator (the one torchvision's random transforms draw from) is seeded per sample
    inside a forked RNG state, so the augmentation depends only on the sample's seed and the
    caller's stream is left untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any]:
        # The DataLoader calls this once per batch: one fork of the RNG state per batch.
        with torch.random.fork_rng(devices=[]):
            out = []
            for index, seed in items:
                # The CPU generator only: torch.manual_seed also reseeds every accelerator
                # backend, which costs about a millisecond per call.
                torch.default_generator.manual_seed(seed)
                out.append(self.dataset[index])
            return out


class EndlessBatches:
    """The P x K sampler's batches from ``(epoch, start)`` on, epoch after epoch, without end.

    One data loader then serves the whole run, so its workers are not restarted at every epoch
    (CUB with P = 20 has only 5 batches per epoch). Each index comes with its sample's seed.
    """

    def __init__(self, sampler: Any, epoch: int, start: int, seed: int, rank: int) -> None:
        self.sampler, self.epoch, self.start = sampler, epoch, start
        self.seed, self.rank = seed, rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start
        while True:
            self.sampler.set_epoch(epoch, start_batch=start)
            for b, batch in enumerate(self.sampler, start=start):
                # Seeded by the position in the GLOBAL batch: the same image gets the same
                # augmentation whatever the number of processes.
                offset = self.rank * len(batch)
                yield [
                    (int(i), _sample_seed(self.seed, epoch, b, offset + j))
                    for j, i in enumerate(batch)
                ]
            epoch, start = epoch + 1, 0


def make_train_loader(
    dataset: Dataset, sampler: Any, epoch: int, start: int, config: Config, rank: int
) -> DataLoader:
    """An endless loader from batch ``start`` of ``epoch`` (the batches already trained on are
    skipped, not replayed)."""
    return DataLoader(
        SeededSamples(dataset),
        batch_sampler=EndlessBatches(sampler, epoch, start, config.train.seed, rank),
        num_workers=config.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: creating the iterator must not draw from the global stream.
        generator=torch.Generator().manual_seed(config.train.seed),
    )


# =========================================================================== 2. one step


def train_one_step(
    model: nn.Module,
    losses: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: Config,
    ctx: dist_utils.DistributedContext,
    stop_requested: bool = False,
) -> tuple[dict[str, float], bool]:
    """One optimisation step; returns (logged values, stop agreed by every rank).

    Raises :class:`NonFiniteLossError` on every rank at once when any rank's embeddings, loss or
    gradients are not finite, or when the update explodes the parameters (``|w| > 1e12``).
    The message names only what went wrong; :func:`train_loop` adds the iteration and the way on.
    """
    model.train()
    with autocast(config.train.amp, ctx.device):
        outputs = model(images)
    # The losses run in float32: their exp weights overflow float16 (see rankedlist.losses).
    outputs = {head: out.float() for head, out in outputs.items()}
    bad_heads = [head for head in losses if not bool(torch.isfinite(outputs[head]).all())]
    for head in bad_heads:
        # Ones stand in so every rank still calls the loss (a global-batch loss gathers inside):
        # a rank that raised here would leave the others waiting in that collective. (Not zeros:
        # a zero row cannot be L2-normalised and the loss rejects it.)
        outputs[head] = torch.ones_like(outputs[head])
    parts = {head: fn(outputs[head], labels) for head, fn in losses.items()}
    loss = sum(parts.values())
    # One collective per step: the flags every rank must agree on, and the logged losses
    # (each rank's loss is its share of the global batch's; their mean is the global loss).
    local = [float(bool(bad_heads)), float(not torch.isfinite(loss)), float(stop_requested)]
    shared = dist_utils.all_reduce_mean(
        torch.tensor(local + [float(v.detach()) for v in parts.values()], dtype=torch.float64), ctx
    )
    if shared[0] > 0:
        where = f" (head {', '.join(bad_heads)})" if bad_heads else " on another process"
        raise NonFiniteLossError(f"the embeddings are not finite{where}")
    if shared[1] > 0:
        raise NonFiniteLossError(f"the loss is not finite (loss = {sum(shared[3:].tolist())})")

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    values: dict[str, float] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if config.optim.clip_grad_norm is not None:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, config.optim.clip_grad_norm)
        values["grad_norm"] = float(norm)
    # With a float16 GradScaler an inf gradient is routine (the scaler skips that step and lowers
    # its scale); without one it means divergence.
    grad_peak = 0.0 if scaler.is_enabled() else max_abs(p.grad for p in params)
    if math.isfinite(grad_peak):
        scaler.step(optimizer)
        scaler.update()
    param_peak = max_abs(params)
    # The gradients of DDP parameters are all-reduced, so these agree across ranks; loss
    # parameters (proxies) are not, so the flags are shared anyway (one tiny collective).
    flags = dist_utils.all_reduce_mean(
        torch.tensor(
            [float(not math.isfinite(grad_peak)), float(not is_healthy(param_peak))],
            dtype=torch.float64,
        ),
        ctx,
    )
    if flags[0] > 0:
        raise NonFiniteLossError("the gradients are not finite")
    if flags[1] > 0:
        raise NonFiniteLossError(
            f"the update exploded the parameters (max |w| = {param_peak:.3g}, limit {EXPLODED:g})"
        )

    head_losses = dict(zip(parts, shared[3:].tolist(), strict=True))
    values["loss"] = sum(head_losses.values())
    stats: dict[str, list[float]] = {}
    for head, fn in losses.items():
        if len(losses) > 1:
            values[f"loss/{head}"] = head_losses[head]
        for key, value in (getattr(fn, "last_stats", None) or {}).items():
            stats.setdefault(key, []).append(float(value))
            if len(losses) > 1:
                values[f"{key}/{head}"] = float(value)
    values.update({key: sum(v) / len(v) for key, v in stats.items()})  # mean over heads
    return values, bool(shared[2] > 0)


# =========================================================================== 3. evaluation


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    dataset: Dataset,
    ctx: dist_utils.DistributedContext,
    batch_size: int = 256,
    amp: str = "none",
    num_workers: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """L2-normalised embeddings of every item, in dataset order: ``{"fused": ..., head: ...}``.

    Each rank embeds a contiguous shard; the shards are gathered so every rank gets the whole set.
    """
    base = dist_utils.unwrap_model(model)
    was_training = base.training
    base.eval()
    shard = Subset(dataset, dist_utils.shard_indices(len(dataset), ctx).tolist())
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]
    for images, batch_labels in loader:
        for key, value in _embed(base, images.to(ctx.device), amp, ctx.device).items():
            chunks.setdefault(key, []).append(value.cpu())
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
    if not chunks:  # an empty shard (more ranks than items) still joins the gather
        size = int(base.input_size)
        probe = _embed(base, torch.zeros(1, 3, size, size, device=ctx.device), amp, ctx.device)
        chunks = {key: [value[:0].cpu()] for key, value in probe.items()}
    local = {key: torch.cat(values) for key, values in chunks.items()}
    gathered, all_labels = dist_utils.gather_eval(local, torch.cat(labels), ctx)
    base.train(was_training)
    return {k: v.numpy() for k, v in gathered.items()}, all_labels.numpy()


def _embed(model: nn.Module, images: torch.Tensor, amp: str, device: torch.device):
    with autocast(amp, device):
        outputs = model(images)
    outputs = {head: out.float() for head, out in outputs.items()}
    embs = {FUSED: model.fuse(outputs)}
    if len(outputs) > 1:
        embs.update({head: F.normalize(out, dim=1) for head, out in outputs.items()})
    return embs


def evaluate(
    model: nn.Module,
    query: Dataset,
    gallery: Dataset | None,
    protocol: str,
    ctx: dist_utils.DistributedContext,
    config: Config,
    with_nmi: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], np.ndarray]:
    """Metrics of the fused embedding and of each head; also the embeddings and labels.

    With a gallery (In-Shop) the returned embeddings are the queries followed by the gallery.
    Metrics are computed on rank 0 only (the other ranks get an empty dict).
    """
    from rankedlist.evaluation import evaluate_embeddings

    kwargs = dict(ctx=ctx, batch_size=config.train.eval_batch_size, amp=config.train.amp)
    q_embs, q_labels = extract_embeddings(
        model, query, num_workers=config.data.num_workers, **kwargs
    )
    g_embs, g_labels = (None, None)
    if gallery is not None:
        g_embs, g_labels = extract_embeddings(
            model, gallery, num_workers=config.data.num_workers, **kwargs
        )
    metrics: dict[str, dict[str, float]] = {}
    if ctx.is_main:
        for key, emb in q_embs.items():
            metrics[key] = evaluate_embeddings(
                emb,
                q_labels,
                None if g_embs is None else g_embs[key],
                g_labels,
                protocol=protocol,
                with_nmi=with_nmi,
            )
    if g_embs is None:
        return metrics, q_embs, q_labels
    joined = {k: np.concatenate([q_embs[k], g_embs[k]]) for k in q_embs}
    return metrics, joined, np.concatenate([q_labels, g_labels])


# =========================================================================== 4. run state, log


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
    iteration: int = 0  # optimisation steps done
    epoch: int = 0
    batch: int = 0  # batches of `epoch` done
    best: dict[str, Any] = field(default_factory=dict)  # metric, value, iteration
    saved_at: int | None = None  # iteration of the last full checkpoint written (or resumed)
    saved_path: Path | None = None  # and its file

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


class RunLog:
    """``metrics.jsonl`` + TensorBoard + progress bar (or log lines), on rank 0 only."""

    def __init__(self, run: Run) -> None:
        self.active = run.ctx.is_main
        self.path = run.run_dir / "metrics.jsonl"
        self.every = run.config.train.log_every
        self.writer = None
        self.bar = None
        self.window = (time.perf_counter(), 0)  # (start, images) of the throughput window
        if not self.active:
            return
        self._truncate_after(run.iteration)
        if run.config.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(run.run_dir / "tensorboard"), purge_step=run.iteration or None
            )
        if sys.stderr.isatty():  # a live bar for people, plain lines for log files
            from tqdm.auto import tqdm

            total = run.config.train.iterations
            self.bar = tqdm(total=total, initial=run.iteration, unit="it", dynamic_ncols=True)

    def _truncate_after(self, iteration: int) -> None:
        # On resume, drop what was logged after the checkpoint: it is about to be redone.
        if self.path.exists():
            kept = [r for r in self.records() if r.get("step", 0) <= iteration]
            # Atomic: a crash here must not lose the history that is kept.
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-append (or a blank one): not a record
        return out

    def write(self, step: int, values: Mapping[str, Any], split: str | None = None) -> None:
        """One record ``{"step": step, ...}``; ``split`` prefixes the keys (``val/recall@1``)."""
        if not self.active:
            return
        record = {"step": step, **{(f"{split}/{k}" if split else k): v for k, v in values.items()}}
        try:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as err:  # a full disk names no file on write(); the user needs it
            if err.filename is None and err.errno is not None:
                raise OSError(err.errno, err.strerror, str(self.path)) from err
            raise
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key if split else f"train/{key}", value, step)

    def step(self, run: Run, values: dict[str, float], images: int) -> None:
        """Account for one training step; every ``log_every`` steps write a record."""
        start, count = self.window
        self.window = (start, count + images)
        if not self.active:
            return
        stats = _pair_stats(values)
        rate = (count + images) / max(time.perf_counter() - start, 1e-9)
        if self.bar is not None:  # tqdm adds the elapsed time and the ETA
            postfix = {"loss": f"{values['loss']:.4f}", **stats, "img/s": f"{rate:.0f}"}
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
        total = run.config.train.iterations
        if run.iteration % self.every and run.iteration != total:
            return
        values["images_per_s"] = rate
        self.write(run.iteration, {"epoch": run.epoch, **values})
        self.window = (time.perf_counter(), 0)
        if self.bar is None:
            line = [f"iteration {run.iteration}/{total}", f"loss {values['loss']:.4f}"]
            line += [f"{k} {v}" for k, v in stats.items()]
            line += [f"lr {values['lr']:.3g}", f"{values['images_per_s']:.0f} img/s"]
            self.message("  ".join(line))

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def end_progress(self) -> None:
        """Close the progress bar (training is over; later messages print as plain lines)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.end_progress()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _pair_stats(values: Mapping[str, float]) -> dict[str, str]:
    """Active positives/negatives per query, for the progress display (RLL only)."""
    names = (("active_pos", "pos"), ("active_neg", "neg"))
    return {short: f"{values[key]:.1f}" for key, short in names if key in values}


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict[str, int | None]]:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts."""
    flag: dict[str, int | None] = {"signal": None}

    def handler(signum, frame):  # noqa: ARG001
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay with the caller
        previous = {}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# =========================================================================== 5. main


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


def _build_losses(config: Config, model: nn.Module, num_classes: int, ctx) -> nn.ModuleDict:
    """One loss per head (RLL-(L,M,H) trains each head with its own loss and sums them)."""
    from rankedlist.training.loss_factory import build_loss

    return nn.ModuleDict(
        {
            head: build_loss(
                config.loss.name,
                dict(config.loss.params),
                num_classes=num_classes,
                embedding_dim=model.embedding_dim,
                ctx=ctx,
            )
            for head in model.head_names
        }
    ).to(ctx.device)


def build_run(config: Config, ctx: dist_utils.DistributedContext, load_pretrained: bool) -> Run:
    """Model, data, losses, optimiser, schedule and sampler (identical weights on every rank)."""
    from rankedlist.data import PKSampler, build_transform

    t = config.train
    _set_seed(t.seed)
    model = build_model(config, load_pretrained)
    image_size = config.data.image_size or model.input_size
    train_set = _get_dataset(config, "train", build_transform(model.input_style, True, image_size))
    eval_transform = build_transform(model.input_style, False, image_size)
    val_set = _get_dataset(config, "val", eval_transform) if config.data.val_fraction > 0 else None
    losses = _build_losses(config, model, len(train_set.classes), ctx)
    model = dist_utils.wrap_model(model, ctx)
    optimizer = build_optimizer(model, config.optim, losses.values())
    sampler = PKSampler(
        train_set.labels, config.data.p, config.data.k, seed=t.seed,
        world_size=ctx.world_size, rank=ctx.rank,
    )  # fmt: skip
    sampler.set_epoch(0)
    batches_per_epoch = len(sampler)
    if batches_per_epoch == 0:
        raise ValueError(
            f"the training split has {len(train_set.classes)} classes, fewer than data.p = "
            f"{config.data.p} per batch; lower data.p"
        )
    _set_seed(t.seed + ctx.rank)  # per-rank randomness from here on (e.g. dropout)
    return Run(
        config, ctx, model, losses, optimizer,
        scheduler=build_scheduler(optimizer, config.schedule, t.iterations),
        scaler=make_grad_scaler(t.amp, ctx.device),
        sampler=sampler, batches_per_epoch=batches_per_epoch,
        train_set=train_set, val_set=val_set, eval_transform=eval_transform,
        best={"metric": t.select_metric, "value": None, "iteration": None},
    )  # fmt: skip


def validate(run: Run, log: RunLog) -> None:
    """Evaluate the val split, log it, and keep ``best.pt`` when the selection metric improves."""
    metric = run.config.train.select_metric
    metrics, _, _ = evaluate(
        run.model, run.val_set, None, "default", run.ctx, run.config, with_nmi=False
    )
    if run.ctx.is_main:
        row = metrics[FUSED]
        if metric not in row:
            raise ValueError(
                f"train.select_metric = {metric!r} is not a validation metric; choose one of "
                f"{sorted(k for k in row if k != 'lone_queries')}"
            )
        log.write(run.iteration, row, "val")
        improved = run.best["value"] is None or row[metric] > run.best["value"]
        if improved:  # ties keep the earlier iteration
            run.best = {"metric": metric, "value": row[metric], "iteration": run.iteration}
        note = " (best so far)" if improved else ""
        log.message(f"iteration {run.iteration}: val {metric} {row[metric]:.4f}{note}")
    run.best = dist_utils.broadcast_object(run.best, run.ctx)
    if run.best["iteration"] == run.iteration:
        run.save("best.pt", weights_only=True)


def train_loop(run: Run, log: RunLog, stop_after: int | None = None) -> int | None:
    """Train up to ``train.iterations`` (or ``stop_after``); return the signal that stopped it.

    An epoch is one pass of the P x K sampler; a resumed run re-enters its epoch at the exact
    batch. After each step: log, validate (``eval_every``), checkpoint (``checkpoint_every``, the
    end, a stop).
    """
    t = run.config.train
    end = t.iterations if stop_after is None else min(stop_after, t.iterations)
    if run.iteration >= end:
        return None
    loader = make_train_loader(
        run.train_set, run.sampler, run.epoch, run.batch, run.config, run.ctx.rank
    )
    with _stop_on_signals() as flag:
        for images, labels in loader:
            try:
                values, stop = train_one_step(
                    run.model, run.losses,
                    images.to(run.ctx.device, non_blocking=True),
                    labels.to(run.ctx.device, non_blocking=True),
                    run.optimizer, run.scaler, run.config, run.ctx,
                    stop_requested=flag["signal"] is not None,
                )  # fmt: skip
            except NonFiniteLossError as exc:
                raise _diverged(run, run.iteration + 1, exc) from None
            values["lr"] = run.optimizer.param_groups[0]["lr"]  # the rate this step used
            run.scheduler.step()
            run.iteration, run.batch = run.iteration + 1, run.batch + 1
            if run.batch == run.batches_per_epoch:
                run.epoch, run.batch = run.epoch + 1, 0
            log.step(run, values, images.shape[0] * run.ctx.world_size)

            periodic = t.checkpoint_every and run.iteration % t.checkpoint_every == 0
            try:
                if run.val_set is not None and (
                    run.iteration == t.iterations
                    or (t.eval_every and run.iteration % t.eval_every == 0)
                ):
                    validate(run, log)
                if stop or periodic or run.iteration >= end:
                    run.save()
            except NonFiniteLossError as exc:
                raise _diverged(run, run.iteration, exc) from None
            if stop:
                return flag["signal"]
            if run.iteration >= end:
                return None
    raise AssertionError("unreachable: the training loader never ends")


def _diverged(run: Run, iteration: int, exc: Exception) -> NonFiniteLossError:
    """The divergence error with the iteration, the last good checkpoint and the remedies."""
    return NonFiniteLossError(
        divergence_message(
            iteration,
            str(exc),
            run.saved_path,
            run.saved_at,
            lr=run.config.optim.lr,
            clip_grad_norm=run.config.optim.clip_grad_norm,
            amp=run.config.train.amp,
        )
    )


def test_and_report(run: Run, log: RunLog) -> tuple[dict[str, dict[str, float]], dict]:
    """Evaluate the test split once with the dataset's protocol; write metrics and the report."""
    config = run.config
    protocol = _protocol(config)
    query_split, gallery_split = _eval_splits(config, "test")
    query = _get_dataset(config, query_split, run.eval_transform)
    gallery = _get_dataset(config, gallery_split, run.eval_transform) if gallery_split else None
    metrics, embeddings, labels = evaluate(run.model, query, gallery, protocol, run.ctx, config)
    if not run.ctx.is_main:
        return metrics, {}
    log.write(run.iteration, metrics[FUSED], "test")
    log.close()
    title = f"test metrics ({protocol} protocol, {len(labels)} images):"
    log.message("\n".join([title, *format_metrics_table(metrics)]))
    if not config.train.report:
        heads = {k: v for k, v in metrics.items() if k != FUSED}
        path = run.run_dir / "metrics.json"
        payload = {
            "test": metrics[FUSED],
            "heads": heads,
            "config": config.to_dict(),
            "rankedlist_version": __version__,
        }
        atomic_write_text(path, json.dumps(payload, indent=2))
        return metrics, {"metrics": path}
    from rankedlist.report import write_report

    files = write_report(
        run.run_dir,
        config=config.to_dict(),
        history=log.records(),
        test_metrics=metrics,
        protocol=protocol,
        embeddings=embeddings[FUSED],
        labels=labels,
        dataset=query if gallery is None else _QueryThenGallery(query, gallery),
        query_count=None if gallery is None else len(query),
    )
    return metrics, files


class _QueryThenGallery:
    """In-Shop's queries followed by its gallery, as one dataset for the report's pictures."""

    def __init__(self, query: Any, gallery: Any) -> None:
        self.parts, self.classes = (query, gallery), query.classes

    def __len__(self) -> int:
        return len(self.parts[0]) + len(self.parts[1])

    def load_image(self, i: int) -> Any:
        n = len(self.parts[0])
        return self.parts[0].load_image(i) if i < n else self.parts[1].load_image(i - n)


def format_metrics_table(metrics: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Fixed-width lines: one row per embedding (fused, heads), one column per metric."""
    keys = [
        k for k in metrics[FUSED]
        if k.startswith("recall@") or k in ("r_precision", "map@r", "nmi")
    ]  # fmt: skip
    width = max(len(name) for name in metrics)
    lines = [" ".join([" " * width, *(f"{k:>11}" for k in keys)])]
    for name, row in metrics.items():
        cells = (f"{row[k]:>11.4f}" if k in row else f"{'-':>11}" for k in keys)
        lines.append(" ".join([f"{name:<{width}}", *cells]))
    return lines


def main(
    config: Config | Mapping[str, Any],
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    allow_config_change: bool = False,
) -> TrainResult:
    """Train, select on validation, test once, report.

    Args:
        config: a :class:`Config` (or a mapping that :func:`config_from_dict` accepts).
        resume: a checkpoint (``last.pt``) or a run folder to continue from; the world size must
            be the one that wrote it, and the config may differ from the saved one only in keys
            that do not change the computation (``train.iterations``, logging, evaluation and
            checkpoint frequency, ``data.num_workers``, the device, TensorBoard, the report).
        stop_after: stop with a checkpoint once this iteration is done, to be resumed later
            (time-boxed jobs); the test evaluation and the report wait for the final iteration.
        overwrite: when ``train.run_dir`` already holds a run (and ``resume`` is not given),
            delete that run's files and start again; without it such a folder is refused.
        allow_config_change: let a resume change any key but the model, the dataset and the
            loss (e.g. a lower ``optim.lr`` after a divergence); the change is recorded.

    Raises:
        RunExistsError: ``train.run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
        NonFiniteLossError: training diverged (the message names the last good checkpoint).
        RunInterrupted: a signal arrived during the final test evaluation (training is saved).
    """
    if not isinstance(config, Config):
        config = config_from_dict(config)
    config.validate()
    ctx = dist_utils.init_distributed(config.train.device)
    # Process-wide torch settings this run changes; restored afterwards for in-process callers.
    threads = torch.get_num_threads()
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        if config.train.num_threads is not None and ctx.device.type == "cpu":
            torch.set_num_threads(config.train.num_threads)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _main(config, ctx, resume, stop_after, overwrite, allow_config_change)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        dist_utils.cleanup_distributed(ctx)


def _prepare_run_dir(config: Config, ctx, resume, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder holding another run; drop the temporary
    files a killed checkpoint write left. Rank 0 looks, every rank gets the same answer."""
    run_dir = Path(config.train.run_dir)
    same_folder = resume is not None and _checkpoint_folder(resume) == run_dir.resolve()
    found = existing_run_files(run_dir) if ctx.is_main and not same_folder else []
    found = dist_utils.broadcast_object(found, ctx)
    if found and not overwrite:
        raise refuse_existing_run(run_dir, found)
    if ctx.is_main:
        if found:
            remove_run(run_dir)
            print(f"--overwrite: removed the previous run in {run_dir}", flush=True)
        remove_orphan_temporaries(run_dir)
    dist_utils.barrier(ctx)


def _checkpoint_folder(resume: str | Path) -> Path:
    path = Path(resume)
    return (path if path.is_dir() else path.parent).resolve()


def _main(config: Config, ctx, resume, stop_after, overwrite, allow_config_change) -> TrainResult:
    t = config.train
    _prepare_run_dir(config, ctx, resume, overwrite)
    checkpoint = load_checkpoint(resume) if resume is not None else None
    changes: dict[str, Any] = {}
    if checkpoint is not None:
        if "optimizer" not in checkpoint:
            raise ValueError(f"{resume} holds model weights only; resume from a run's last.pt")
        if checkpoint["world_size"] != ctx.world_size:
            raise ValueError(
                f"{resume} was written by {checkpoint['world_size']} process(es) but this run has "
                f"{ctx.world_size}: resume with the same world size (torchrun --nproc_per_node)"
            )
        changes = check_resume_config(checkpoint["config"], config, resume, allow_config_change)

    run = build_run(config, ctx, load_pretrained=checkpoint is None)
    if checkpoint is not None:
        run.load_state_dict(checkpoint)
        run.saved_path = Path(resume) if not Path(resume).is_dir() else Path(resume) / "last.pt"
        del checkpoint
    if ctx.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run.run_dir / "config.yaml")
        if changes:
            record_config_changes(run.run_dir, run.iteration, resume, changes)
    dist_utils.barrier(ctx)
    log = RunLog(run)
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

    try:
        signum = train_loop(run, log, stop_after)
    except BaseException:
        log.close()
        raise
    log.end_progress()
    last = run.run_dir / "last.pt"
    if run.iteration < t.iterations:  # a signal or stop_after: resume later
        log.close()
        why = f"interrupted by signal {signum}" if signum is not None else "stopped"
        log.message(
            f"{why} at iteration {run.iteration}; checkpoint saved to {last}. "
            f"Resume with: rankedlist train --resume {last}"
        )
        status = "interrupted" if signum is not None else "stopped"
        return TrainResult(run.run_dir, status, run.iteration, checkpoint=last, signal=signum)

    # Training is complete and saved; a signal from here on must say how to finish the rest.
    try:
        with _raise_on_signals():
            # The model: best on validation when there is one, else the final iteration.
            if run.val_set is not None and run.best["iteration"] is not None:
                weights = load_checkpoint(run.run_dir / "best.pt")["model"] if ctx.is_main else None
                dist_utils.unwrap_model(run.model).load_state_dict(
                    dist_utils.broadcast_object(weights, ctx)
                )
                log.message(
                    f"selected iteration {run.best['iteration']} "
                    f"({run.best['metric']} {run.best['value']:.4f} on val)"
                )
            metrics, files = test_and_report(run, log)
    except _Signalled as exc:
        log.close()
        raise RunInterrupted(
            f"interrupted by signal {exc.signum} during the final test evaluation; training is "
            f"complete and saved in {last} (iteration {run.iteration}), the test metrics and "
            f"the report were not written. Finish them with: rankedlist train --resume {last}",
            exc.signum,
        ) from None
    for name, path in files.items():
        log.message(f"{name}: {path}")
    dist_utils.barrier(ctx)
    return TrainResult(run.run_dir, "completed", run.iteration, metrics, files, last)


class RunInterrupted(RuntimeError):
    """A signal stopped the run after training, before its test metrics and report were written.

    ``signum`` is the signal; the message says what was saved and how to finish.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _raise_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM raise at once (there is no step boundary to wait for in an evaluation)."""

    def handler(signum, frame):  # noqa: ARG001
        raise _Signalled(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# =========================================================================== 6. re-evaluation


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
) -> dict[str, dict[str, float]]:
    """Re-evaluate a saved model on a split (``test``, ``val`` or ``train``) of its recipe's data.

    ``overrides`` are ``key=value`` strings applied to the saved config (e.g. ``data.root=...``).
    Returns ``{"fused": metrics, head: metrics, ...}``.
    """
    from rankedlist.data import build_transform
    from rankedlist.training.config import apply_overrides

    state = load_checkpoint(path)
    config = apply_overrides(config_from_dict(state["config"]), list(overrides))
    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r} is unknown; choose test, val or train")
    if split == "val" and config.data.val_fraction == 0:
        raise ValueError(
            "this run has no val split (data.val_fraction = 0); pass data.val_fraction=F to "
            "carve one from the training classes as a training run with that value would"
        )
    ctx = dist_utils.init_distributed(device)
    try:
        model = build_model(config, load_pretrained=False)
        model.load_state_dict(state["model"])
        model = dist_utils.wrap_model(model, ctx)
        base = dist_utils.unwrap_model(model)
        transform = build_transform(
            base.input_style, False, config.data.image_size or base.input_size
        )
        query_split, gallery_split = _eval_splits(config, split)
        query = _get_dataset(config, query_split, transform)
        gallery = _get_dataset(config, gallery_split, transform) if gallery_split else None
        protocol = _protocol(config) if split == "test" else "default"
        metrics, _, _ = evaluate(model, query, gallery, protocol, ctx, config)
        return metrics
    finally:
        dist_utils.cleanup_distributed(ctx)
