"""``rankedlist compare``: losses compared fairly, each tuned alike, tested once per seed.

The work is :func:`rankedlist.compare.run_comparison`. Exit code 0, or 130 / 143 when SIGINT /
SIGTERM stopped it; a bad plan is raised as a ``ValueError`` (one ``error:`` line, printed by
:mod:`rankedlist.cli.errors`) before anything runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["DESCRIPTION", "add_parser", "plan_from_args", "run"]

DESCRIPTION = (
    "Compare losses fairly: every recipe's loss gets the same hyper-parameter search (one Optuna "
    "study per loss in one storage: the same trials, iterations, sampler seed and pruner, the "
    "same shared dimensions lr and k) on class-disjoint validation classes; then each loss's "
    "best configuration and its untuned recipe are trained once per seed on all the training "
    "classes and tested once each. OUT holds results.json, the report, the searches and the "
    "runs. Several processes with the same --out (and --storage) share the work; Ctrl-C or "
    "SIGTERM leaves it consistent and the same command continues (done runs are never tested "
    "again; more --seeds run only the new seeds)."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compare`` to ``parser.add_subparsers()``; returns its parser."""
    parser = subparsers.add_parser(
        "compare",
        help="tune every loss alike, then train and test each tuned and untuned once per seed",
        description=DESCRIPTION,
    )
    add = parser.add_argument
    add("--recipes", nargs="+", metavar="RECIPE", help="recipe names or YAML paths, one per loss")
    add("--plan", metavar="FILE", help="a YAML plan naming the same things (the options win)")
    add("--trials", metavar="N", help="trials per loss (default 8)")
    add("--seeds", nargs="+", metavar="S", help="seeds of the final runs (default 0 1 2)")
    add("--folds", metavar="F", help="class-disjoint validation folds (default 1)")
    add(
        "--storage", metavar="URL",
        help="a journal file (default OUT/studies.journal) or a database URL shared by workers",
    )  # fmt: skip
    add("--out", metavar="DIR", help="output folder (default runs/compare)")
    add("--metric", help="the validation metric every search maximises (default map@r)")
    add("--pruner", help="median (default), halving or none, for every search")
    add("--sampler-seed", metavar="S", help="the TPE seed of every study (default 0)")
    add("overrides", nargs="*", metavar="KEY=VALUE", help="for every recipe: train.iterations=300")
    return parser


def plan_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~rankedlist.compare.plan.ComparePlan` of the command line (and --plan)."""
    from rankedlist.compare.plan import parse_plan

    values = {
        "recipes": args.recipes, "trials": args.trials, "seeds": args.seeds,
        "folds": args.folds, "storage": args.storage, "out": args.out, "metric": args.metric,
        "pruner": args.pruner, "sampler_seed": args.sampler_seed,
        "overrides": list(args.overrides or []) or None,
    }  # fmt: skip
    return parse_plan(values, args.plan)


def run(args: argparse.Namespace) -> int:
    """Run ``rankedlist compare``; 0, or 128 + the signal that stopped it."""
    from rankedlist.compare.finals import CompareInterrupted
    from rankedlist.compare.runner import run_comparison

    plan = plan_from_args(args)
    try:
        run_comparison(plan)
    except CompareInterrupted as exc:
        print(f"compare: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    return 0
