"""Shared pieces of the tune tests: a tiny glyph recipe, the command line, a split recorder.

Every trial is a few iterations of a narrow GlyphNet on 32 px glyphs (seconds, not minutes).
``glyphs_recorded`` is the glyph dataset that appends each split it opens to the file named by
``$RANKEDLIST_SPLITS_LOG``: the proof that the search never opens the test split.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GLYPHS = str(REPO / "configs" / "glyphs.yaml")
SPLITS_LOG = "RANKEDLIST_SPLITS_LOG"
TINY = [
    "data.options={characters: ABCDEFGHJKLMNPQRSTUVWXYZabdefghijkmnqrty23456789}",
    "data.p=8",
    "data.k=2",
    "model.embedding_dim=16",
    "model.options={widths: [8, 16, 16, 32]}",
    "schedule.warmup_iters=1",
    "train.log_every=1",
    "train.eval_batch_size=512",
    "train.deterministic=true",
    "train.tensorboard=false",
    "train.report=false",
]


def register_recorded_glyphs() -> None:
    """Register ``glyphs_recorded`` once per process."""
    from rankedlist.data import get_dataset, list_datasets, register_dataset

    if "glyphs_recorded" in list_datasets():
        return

    def factory(root, split="train", transform=None, **options):
        log = os.environ.get(SPLITS_LOG)
        if log:
            with open(log, "a") as fh:
                fh.write(split + "\n")
        return get_dataset("glyphs", root, split=split, transform=transform, **options)

    register_dataset("glyphs_recorded", factory)


def run_cli(argv: list[str]) -> int:
    """``rankedlist ARGV`` in-process: the main command line once it has ``tune``, else
    ``python -m rankedlist.tune`` (the same command on its own) for ``tune ...``."""
    import argparse
    import importlib

    cli = importlib.import_module("rankedlist.cli.main")  # the package's `main` is the function
    parser = cli.build_parser()
    has_tune = any(
        isinstance(a, argparse._SubParsersAction) and "tune" in a.choices for a in parser._actions
    )
    if argv[0] != "tune" or has_tune:
        return cli.main(argv)
    from rankedlist.tune.cli import main as tune_main

    return tune_main(argv[1:])


def load_study(storage: Path, name: str, create: bool = False):
    """The study ``name`` of the journal file ``storage`` (created, empty, with ``create``)."""
    import optuna

    from rankedlist.tune.study import open_storage

    backend, _, _ = open_storage(str(storage), storage.parent)
    if create:
        return optuna.create_study(study_name=name, storage=backend, direction="maximize")
    return optuna.load_study(study_name=name, storage=backend)
