"""The tiny glyph run of the end-to-end tests: a few iterations of a narrow GlyphNet on 32 px
glyphs, 8 classes x 2 fonts a batch, on the CPU (a second or two a run).

A test takes the ``tiny_run`` fixture (tests/conftest.py), a :class:`TinyRun`. A script that a
test starts in a child process cannot take fixtures: it imports this module, ``tests/`` on its
``PYTHONPATH`` (under pytest ``tests/`` is on ``sys.path``: the ``pythonpath`` option in
pyproject.toml).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLYPHS = str(REPO / "configs" / "glyphs.yaml")

#: The small model and batch: 8 classes x 2 fonts of 32 px, 16-dim embeddings of a narrow
#: GlyphNet.
TINY_MODEL = [
    "data.p=8",
    "data.k=2",
    "data.image_size=32",
    "model.embedding_dim=16",
    "model.options={widths: [8, 16, 16, 32]}",
]
#: Every step logged, the evaluation in one batch, on the CPU.
TINY_LOGGING = ["train.log_every=1", "train.eval_batch_size=512", "train.device=cpu"]
#: Bit for bit repeatable, and no TensorBoard nor report to write.
QUIET = ["train.deterministic=true", "train.tensorboard=false", "train.report=false"]
#: The tiny run, everything else the recipe's: its schedule, TensorBoard and the report (what the
#: command-line tests check).
TINY_CORE = [*TINY_MODEL, *TINY_LOGGING]
#: The trainer tests' tiny run: a short cosine warm-up, quiet.
TINY = [*TINY_MODEL, "optim.lr=0.003", "schedule.name=cosine", "schedule.warmup_iters=2",
        *TINY_LOGGING, *QUIET]  # fmt: skip


def tiny_config(run_dir: Path, *overrides: str):
    """The glyph recipe with :data:`TINY`, ``train.run_dir=run_dir`` and then ``overrides``."""
    from rankedlist.training.config import load_config

    return load_config(GLYPHS, [*TINY, f"train.run_dir={run_dir}", *overrides])


def train_argv(run_dir: Path | None, *args: str) -> list[str]:
    """``rankedlist train`` of the tiny run (after ``rankedlist``): the glyph recipe, :data:`TINY`,
    ``train.run_dir=run_dir`` unless None, then ``args`` (overrides and options)."""
    where = [] if run_dir is None else [f"train.run_dir={run_dir}"]
    return ["train", "--config", GLYPHS, *TINY, *where, *args]


def train_records(run_dir: Path) -> list[dict]:
    """The training steps' records of a run's ``metrics.jsonl`` (those with a loss)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


class TinyRun:
    """The ``tiny_run`` fixture: the tiny run's overrides, its config and its command line."""

    recipe = GLYPHS
    overrides = tuple(TINY)  # the trainer tests' run (QUIET)
    core = tuple(TINY_CORE)  # the recipe's schedule, TensorBoard and report

    config = staticmethod(tiny_config)
    argv = staticmethod(train_argv)
    records = staticmethod(train_records)

    @staticmethod
    def train(run_dir: Path | None, *args: str) -> int:
        """``rankedlist train`` of the tiny run, in this process; its exit status."""
        from rankedlist.cli.main import main

        return main(train_argv(run_dir, *args))


def register_split_recorder(name: str, log_variable: str) -> None:
    """Register dataset ``name``: the glyphs, appending each split it opens to the file named by
    the environment variable ``log_variable`` (so a test sees which splits a child process read).
    Once per process."""
    from rankedlist.data import get_dataset, list_datasets, register_dataset

    if name in list_datasets():
        return

    def factory(root, split="train", transform=None, **options):
        log = os.environ.get(log_variable)
        if log:
            with open(log, "a") as fh:
                fh.write(split + "\n")
        return get_dataset("glyphs", root, split=split, transform=transform, **options)

    register_dataset(name, factory)
