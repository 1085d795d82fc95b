"""``rankedlist report RUN``: the HTML results explorer (``report.html``) of an existing run,
its last checkpoint re-evaluated on a split of its data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to ``parser.add_subparsers()``; returns its parser."""
    report = subparsers.add_parser(
        "report",
        help="write a run's report.html: hardest queries, confused classes, per-class results",
        usage="rankedlist report [-h] [--split {test,val}] [--out FILE] [--device DEVICE] "
        "RUN [KEY=VALUE ...]",
        description="Re-evaluate a run's last checkpoint on a split and write report.html: one "
        "self-contained page (no network) with the headline metrics, the hardest queries and "
        "their neighbours, the most confused class pairs, per-class Recall@1 / MAP@R, class "
        "pages and an embedding map.",
    )
    # One positional for the folder and the overrides: `rankedlist` moves every key=value
    # right after the command word, so a separate RUN positional would receive an override.
    report.add_argument(
        "overrides",
        nargs="+",
        metavar="RUN",
        help="the run folder (it holds last.pt), and any config "
        "overrides, e.g. data.root=/data/Stanford_Online_Products",
    )
    report.add_argument(
        "--split",
        default="test",
        choices=("test", "val"),
        help="the split to evaluate (default test; val needs a run with data.val_fraction > 0)",
    )
    report.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the page (default RUN/report.html for test, RUN/report_val.html "
        "for val)",
    )
    report.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return report


def run(args: argparse.Namespace) -> int:
    """Run ``rankedlist report``: evaluate, then write the page; print where it is."""
    from rankedlist.training.evaluate_checkpoint import (
        evaluate_checkpoint,
        logged_history,
        write_evaluation_report,
    )

    run_dir, overrides = _run_and_overrides(args.overrides)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run folder {run_dir} not found; pass the folder a training run wrote "
            "(train.run_dir), which holds last.pt"
        )
    if not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no last.pt; pass a finished (or checkpointed) run's folder"
        )
    name = "report.html" if args.split == "test" else f"report_{args.split}.html"
    out = Path(args.out) if args.out else run_dir / name
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; pass a file name such as {out / name}")
    if not out.parent.is_dir():
        raise FileNotFoundError(
            f"the folder of --out {out} does not exist; create it or choose another path"
        )
    evaluated: dict[str, Any] = {}
    metrics = evaluate_checkpoint(
        run_dir, args.split, overrides, args.device, embeddings_out=evaluated
    )
    if not metrics:  # a non-zero rank of a distributed evaluation
        return 0
    path = write_evaluation_report(out, metrics, evaluated, args.split, logged_history(run_dir))
    print(f"{args.split} report of {run_dir} written to {path}")
    return 0


def _run_and_overrides(words: list[str]) -> tuple[Path, list[str]]:
    """The one word that is not ``key=value`` (the run folder) and the overrides."""
    folders = [w for w in words if "=" not in w]
    if len(folders) != 1:
        raise ValueError(
            f"pass one run folder, then key=value overrides; got {folders or 'none'} besides "
            f"{[w for w in words if '=' in w]} (a folder whose name holds '=' must be renamed)"
        )
    return Path(folders[0]), [w for w in words if "=" in w]
