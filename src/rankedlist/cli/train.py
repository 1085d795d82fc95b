"""``rankedlist train``: a recipe trained, its test split evaluated once, its report written.

Exit code 0 (also a run stopped by ``--stop-after``), or 128 + N when signal N stopped it after
saving a checkpoint; errors are printed by :mod:`rankedlist.cli.errors`.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to ``parser.add_subparsers()``; returns its parser."""
    train = subparsers.add_parser(
        "train",
        help="train a model from a recipe, evaluate it on the test split, write a report",
        description="Train from a YAML recipe; the test split is evaluated once at the end and "
        "report.md, metrics.json and the pictures are written to train.run_dir.",
    )
    train.add_argument(
        "--config", "-c", help="a YAML recipe path or a recipe name from `rankedlist recipes`"
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=0.01")
    train.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from a checkpoint or run folder (default: train.run_dir/last.pt); "
        "without --config the checkpoint's own config is used",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="train.run_dir already holds a run: delete that run's files and start again",
    )
    train.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: accept changed keys that alter the computation (e.g. a lower "
        "optim.lr after a divergence); the model, dataset and loss cannot change",
    )
    train.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop with a checkpoint after iteration N (time-boxed jobs); resume later",
    )
    return train


def run(args: argparse.Namespace) -> int:
    """Run ``rankedlist train``; 0, or 128 + the signal that stopped it."""
    from rankedlist.training.config import apply_overrides, config_from_dict, load_config
    from rankedlist.training.run_folder import checkpoint_folder
    from rankedlist.training.train import main as train_main

    resume = None
    if args.config is not None:
        config = load_config(args.config, args.overrides)  # a path or a recipe name
        if args.resume is not None:
            resume = Path(args.resume) if args.resume else Path(config.train.run_dir) / "last.pt"
    elif args.resume:
        from rankedlist.training.checkpoint import load_checkpoint

        resume = Path(args.resume)
        saved = load_checkpoint(resume)["config"]
        config = apply_overrides(config_from_dict(saved), args.overrides)
    else:
        raise ValueError("train needs --config PATH (or --resume PATH of a checkpoint)")
    if resume is not None and not _names_run_dir(args.overrides):
        # A resume continues in the folder its checkpoint is in, wherever that is now (the
        # recipe's or the checkpoint's saved train.run_dir may be an old place); naming
        # train.run_dir=NEW copies the run there first.
        config.train.run_dir = str(checkpoint_folder(resume))

    result = train_main(
        config,
        resume=resume,
        stop_after=args.stop_after,
        overwrite=args.overwrite,
        allow_config_change=args.allow_config_change,
    )
    if result.status == "interrupted":
        return 128 + int(result.signal or signal.SIGINT)
    return 0


def _names_run_dir(overrides: Sequence[str]) -> bool:
    return any(o.split("=", 1)[0].strip() == "train.run_dir" for o in overrides)
