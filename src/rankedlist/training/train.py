"""Training: ``main(config)`` turns a recipe into a trained model, its test metrics and a report.

The story of a run, top to bottom, in the style of torchvision's reference scripts; each part it
uses lives in a module named after it:

1. ``main``: start (or resume) the run, restore the caller's process state afterwards;
2. ``train_loop``: batches from :mod:`~rankedlist.training.batch_feed`, one
   :func:`~rankedlist.training.step.train_one_step` each, log, validate, checkpoint, signals;
3. ``validate``: the val split, ``best.pt``, and the caller's ``on_validation`` hook (a tuner's
   pruner stops the run there);
4. ``test_and_report``: the test split once, ``metrics.json`` and the report.

The objects of a run are :class:`~rankedlist.training.run.Run`, what ``main`` returns a
:class:`~rankedlist.training.train_result.TrainResult`; its folder's guards (one writer,
an existing run, what a resume continues) are :mod:`~rankedlist.training.run_folder`, a resume's
recipe check :mod:`~rankedlist.training.resume_config`. Logging, checkpoints and the report
happen on rank 0 only; every collective runs on all ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rankedlist.training import distributed as dist_utils
from rankedlist.training.batch_feed import make_train_loader
from rankedlist.training.checkpoint import capture_rng_state, restore_rng_state
from rankedlist.training.config import config_from_dict
from rankedlist.training.config_schema import Config
from rankedlist.training.evaluation_pass import FUSED, evaluate
from rankedlist.training.final_test import test_and_report
from rankedlist.training.health import NonFiniteLossError, divergence_message
from rankedlist.training.run import Run, start_run
from rankedlist.training.run_log import RunLog
from rankedlist.training.signals import (
    RunInterrupted,
    Signalled,
    raise_on_signals,
    stop_on_signals,
)
from rankedlist.training.step import train_one_step
from rankedlist.training.train_result import TrainResult, trained

__all__ = [
    "ValidationHook",
    "main",
    "train_loop",
    "validate",
]

#: Called on rank 0 after each validation with (iteration, the fused val metrics); returning
#: True stops the run there (status "pruned"), e.g. a tuner's pruner.
ValidationHook = Callable[[int, dict[str, float]], bool]


# =========================================================================== the loop


def validate(run: Run, log: RunLog, on_validation: ValidationHook | None = None) -> bool:
    """Evaluate the val split, log it, keep ``best.pt`` when the selection metric improves.

    Returns True when ``on_validation`` asks to stop (every rank gets the same answer).
    """
    metric = run.config.train.select_metric
    metrics, _, _ = evaluate(
        run.model, run.val_set, None, "default", run.ctx, run.config, with_nmi=False
    )
    stop = False
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
        stop = bool(on_validation(run.iteration, dict(row))) if on_validation else False
    run.best, stop = dist_utils.broadcast_object((run.best, stop), run.ctx)
    if run.best["iteration"] == run.iteration:
        run.save("best.pt", weights_only=True)
    return stop


def train_loop(
    run: Run,
    log: RunLog,
    stop_after: int | None = None,
    on_validation: ValidationHook | None = None,
) -> tuple[str | None, int | None]:
    """Train up to ``train.iterations`` (or ``stop_after``).

    Returns ``(why it stopped early or None, the signal if one stopped it)``. An epoch is one
    pass of the P x K sampler; a resumed run re-enters its epoch at the exact batch. After each
    step: log, validate (``eval_every``), checkpoint (``checkpoint_every``, the end, a stop).
    """
    t = run.config.train
    end = t.iterations if stop_after is None else min(stop_after, t.iterations)
    if run.iteration >= end:
        return (None if run.iteration >= t.iterations else "stopped"), None
    loader = make_train_loader(
        run.train_set, run.sampler, run.epoch, run.batch, run.config, run.ctx.rank,
        device=run.ctx.device, augment=run.batch_augment,
    )  # fmt: skip
    with stop_on_signals() as flag:
        for images, labels, indices, _seeds in loader:
            try:
                values, stop = train_one_step(
                    run.model, run.losses,
                    images.to(run.ctx.device, non_blocking=True),
                    labels.to(run.ctx.device, non_blocking=True),
                    run.optimizer, run.scaler, run.config, run.ctx,
                    stop_requested=flag["signal"] is not None,
                    indices=indices.to(run.ctx.device, non_blocking=True),
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
            pruned = False
            try:
                if run.val_set is not None and (
                    run.iteration == t.iterations
                    or (t.eval_every and run.iteration % t.eval_every == 0)
                ):
                    pruned = validate(run, log, on_validation) and run.iteration < t.iterations
                if stop or pruned or periodic or run.iteration >= end:
                    run.save()
            except NonFiniteLossError as exc:
                raise _diverged(run, run.iteration, exc) from None
            if stop:
                return "interrupted", flag["signal"]
            if pruned:
                return "pruned", None
            if run.iteration >= end:
                return (None if run.iteration >= t.iterations else "stopped"), None
    raise AssertionError("unreachable: the training loader never ends")


def _diverged(run: Run, iteration: int, exc: Exception) -> NonFiniteLossError:
    """The divergence error with the iteration, the last good checkpoint and the remedies."""
    o = run.config.optim
    return NonFiniteLossError(
        divergence_message(
            iteration,
            str(exc),
            run.saved_path,
            run.saved_at,
            lr=o.lr,
            clip_grad_norm=o.clip_grad_norm,
            amp=run.config.train.amp,
        )  # fmt: skip
    )


# =========================================================================== main


def main(
    config: Config | Mapping[str, Any],
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    allow_config_change: bool = False,
    on_validation: ValidationHook | None = None,
    test: bool = True,
) -> TrainResult:
    """Train, select on validation, test once, report; in-process callers may call it repeatedly.

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
        on_validation: see :data:`ValidationHook`.
        test: ``False`` ends a completed run after training and validation, without reading the
            test split or writing the report (a tuner's trials must never see the test data).

    The process state a run changes (random generators, thread count, deterministic mode,
    signal handlers, the loss's work buffers) is restored on return, so two calls with the same
    config give the numbers of two separate processes and the caller's random streams go on
    as if the run had not happened.

    Raises:
        RunExistsError: ``train.run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
        NonFiniteLossError: training diverged (the message names the last good checkpoint).
        RunInterrupted: a signal arrived during the final test evaluation (training is saved).
    """
    from rankedlist.losses import release_workspace

    if not isinstance(config, Config):
        config = config_from_dict(config)
    config.validate()
    ctx = dist_utils.init_distributed(config.train.device)
    threads, rng = torch.get_num_threads(), capture_rng_state()
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    run = None
    try:
        if config.train.num_threads is not None and ctx.device.type == "cpu":
            torch.set_num_threads(config.train.num_threads)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        run, log = start_run(config, ctx, resume, overwrite, allow_config_change)
        return _train_test_report(run, log, stop_after, on_validation, test)
    finally:
        if run is not None:  # the folder is free once the run (test and report too) is over
            run.release_folder()
        run = None  # its DDP model holds the process group, which is destroyed below
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        restore_rng_state(rng)
        release_workspace()
        dist_utils.cleanup_distributed(ctx)


def _train_test_report(run: Run, log: RunLog, stop_after, on_validation, test) -> TrainResult:
    try:
        why, signum = train_loop(run, log, stop_after, on_validation)
    except BaseException:
        log.close()
        raise
    log.end_progress()
    last = run.run_dir / "last.pt"
    result = trained(run, log)
    if why is not None:  # a signal, stop_after or the hook: resume later
        log.close()
        # A pruned run was stopped by its caller (a tuner), which says what happens next.
        hint = "" if why == "pruned" else f". Resume with: rankedlist train --resume {last}"
        log.message(
            f"{f'interrupted by signal {signum}' if signum else why} at iteration "
            f"{run.iteration}; checkpoint saved to {last}{hint}"
        )
        return replace(result, status=why, signal=signum)

    if not test:
        log.close()
        return result
    # Training is complete and saved; a signal from here on must say how to finish the rest.
    try:
        with raise_on_signals():
            if run.val_set is not None and run.best["iteration"] is not None:
                run.load_best_weights()
                log.message(
                    f"selected iteration {run.best['iteration']} "
                    f"({run.best['metric']} {run.best['value']:.4f} on val)"
                )
            metrics, files = test_and_report(run, log)
    except Signalled as exc:
        log.close()
        raise RunInterrupted(
            f"interrupted by signal {exc.signum} during the final test evaluation; training is "
            f"complete and saved in {last} (iteration {run.iteration}), the test metrics and "
            f"the report were not written. Finish them with: rankedlist train --resume {last}",
            exc.signum,
        ) from None
    for name, path in files.items():
        log.message(f"{name}: {path}")
    dist_utils.barrier(run.ctx)
    return replace(result, test_metrics=metrics, report_files=files)
