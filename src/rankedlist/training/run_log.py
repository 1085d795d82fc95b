"""A run's log: ``metrics.jsonl``, TensorBoard scalars and a progress bar (or plain log lines),
written on rank 0 only."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rankedlist.atomic_write import atomic_write_text
from rankedlist.training.run_folder import register_run_files

if TYPE_CHECKING:
    from rankedlist.training.run import Run

__all__ = ["RunLog"]


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

            board = run.run_dir / "tensorboard"
            before = set(board.glob("events.out.tfevents.*"))
            self.writer = SummaryWriter(str(board), purge_step=run.iteration or None)
            # The event file is the run's own: listed, --overwrite removes it (and only it).
            mine = sorted(set(board.glob("events.out.tfevents.*")) - before)
            register_run_files(run.run_dir, [f"tensorboard/{p.name}" for p in mine])
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
    """Active positives/negatives per query (RLL) and the rows of a cross-batch memory, for the
    progress display."""
    names = (("active_pos", "pos"), ("active_neg", "neg"))
    stats = {short: f"{values[key]:.1f}" for key, short in names if key in values}
    if "memory_fill" in values:
        stats["mem"] = f"{values['memory_fill']:.0f}"
    return stats
