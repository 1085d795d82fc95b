"""``rankedlist tune``: the hyper-parameter search, its best configuration trained and tested once.

The work is :func:`rankedlist.tune.tune`. Exit code 0, or 130 / 143 when SIGINT / SIGTERM stopped
the worker; errors are printed by :mod:`rankedlist.cli.errors`. ``python -m rankedlist.tune``
runs the same command on its own.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

__all__ = ["DESCRIPTION", "add_parser", "options_from_args", "run"]

DESCRIPTION = (
    "Search hyper-parameters with Optuna (seeded TPE, a pruner) on a class-disjoint validation "
    "split carved from the training classes; the test split is never read during the search. "
    "When the study has N trials, the best configuration is trained once more and tested once, "
    "and --out holds best.yaml, trials.csv and report.md. Several processes with the same "
    "--study and --storage share the study (one per GPU: CUDA_VISIBLE_DEVICES=i); Ctrl-C or "
    "SIGTERM leaves it consistent and the same command again continues it. The test split is "
    "read once: a study whose best was tested takes no more trials (search further in a new "
    "--study and --out)."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune`` to ``parser.add_subparsers()``; returns its parser."""
    parser = subparsers.add_parser(
        "tune",
        help="search hyper-parameters on the validation classes, then train the best and test it",
        description=DESCRIPTION,
    )
    parser.add_argument("--config", "-c", required=True, help="a YAML recipe path or a recipe name")
    parser.add_argument(
        "--trials", type=int, required=True, metavar="N",
        help="trials in the study in all, however many workers share it",
    )  # fmt: skip
    parser.add_argument("--study", help="the study name (default: the recipe's name)")
    parser.add_argument(
        "--storage", metavar="URL",
        help="a journal file path (default: OUT/study.journal; safe for concurrent processes, on "
        "a shared file system too) or a database URL (sqlite:///x.db, postgresql://...)",
    )  # fmt: skip
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/tune/STUDY)")
    parser.add_argument(
        "--space", metavar="FILE",
        help="a YAML search space; overrides the shipped one of the recipe's loss per parameter",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, metavar="S",
        help="this worker starts no new trial after S seconds (run again to continue)",
    )  # fmt: skip
    parser.add_argument(
        "--metric",
        help="validation metric to maximise (default: the recipe's train.select_metric if set, "
        "else map@r)",
    )
    parser.add_argument(
        "--pruner", choices=("median", "halving", "none"), default="median",
        help="stop hopeless trials: median (default) or successive halving",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed (default 0)")
    parser.add_argument(
        "--folds", type=int, default=1, metavar="F",
        help="class-disjoint validation folds carved from the training classes (default 1); each "
        "trial trains once per fold and its objective is the folds' mean (F x data.val_fraction "
        "must be <= 1; Musgrave et al. use 4)",
    )  # fmt: skip
    parser.add_argument(
        "--search-only", action="store_true",
        help="stop after the N trials (best.yaml, trials.csv, report); run again without it to "
        "train the best and test it",
    )  # fmt: skip
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.iterations=300"
    )
    return parser


def options_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~rankedlist.tune.TuneOptions` of the command line."""
    from rankedlist.tune.search import TuneOptions

    return TuneOptions(
        config=args.config,
        trials=args.trials,
        study=args.study,
        storage=args.storage,
        out=args.out,
        space=args.space,
        timeout=args.timeout,
        overrides=list(args.overrides or []),
        metric=args.metric,
        pruner=args.pruner,
        seed=args.seed,
        search_only=args.search_only,
        folds=args.folds,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``rankedlist tune``; 0, or 128 + the signal that stopped it."""
    from rankedlist.tune.search import tune

    result = tune(options_from_args(args))
    if result.status == "interrupted":
        return 128 + int(result.signal or signal.SIGINT)
    return 0
