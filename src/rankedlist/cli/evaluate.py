"""``rankedlist evaluate``: a saved checkpoint's retrieval metrics on a split, again."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``evaluate`` to ``parser.add_subparsers()``; returns its parser."""
    evaluate = subparsers.add_parser(
        "evaluate",
        help="re-evaluate a saved checkpoint on a split",
        description="Rebuild the model of a checkpoint and compute its retrieval metrics.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a .pt file or a run folder")
    evaluate.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train"),
        help="the split to evaluate (default test)",
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    evaluate.add_argument(
        "--report",
        metavar="FILE",
        help="where to write the split's report.html (hardest queries, confused classes, "
        "per-class results; default evaluate-CHECKPOINT-SPLIT.html beside the checkpoint, e.g. "
        "runs/demo/evaluate-last-test.html)",
    )
    evaluate.add_argument(
        "--no-report", action="store_true", help="write no report.html, print the metrics only"
    )
    evaluate.add_argument(
        "--index-method",
        choices=("exact", "ivf", "hnsw", "auto"),
        help="also score the fused embedding through this retrieval index (what an approximate "
        "index costs in Recall@K and MAP@R on these embeddings)",
    )
    evaluate.add_argument("--nprobe", type=int, help="ivf: lists scanned per query")
    evaluate.add_argument("--ef", type=int, help="hnsw: candidates explored per query")
    evaluate.add_argument("--nlist", type=int, help="ivf: number of lists")
    evaluate.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.root=/data/CUB_200_2011"
    )
    return evaluate


def run(args: argparse.Namespace) -> int:
    """Run ``rankedlist evaluate``: print the metrics table (and write ``--output``)."""
    from rankedlist.training.evaluate_checkpoint import (
        evaluate_checkpoint,
        logged_history,
        write_evaluation_report,
    )
    from rankedlist.training.evaluation_pass import format_metrics_table

    if not args.index_method and any(v is not None for v in (args.nprobe, args.ef, args.nlist)):
        raise ValueError("--nprobe, --ef and --nlist need --index-method ivf or hnsw")
    report = _report_path(args)  # both checked before the evaluation's time is spent
    out: dict = {}
    metrics = evaluate_checkpoint(
        args.checkpoint, args.split, args.overrides, args.device, embeddings_out=out
    )
    if not metrics:  # a non-zero rank of a distributed evaluation
        return 0
    exact = dict(metrics)  # the report's numbers: the exact evaluation's, not an index's
    if args.index_method:
        metrics[f"fused via {args.index_method} index"] = _through_index(args, out)
    print(f"{args.split} metrics of {args.checkpoint}:")
    print("\n".join(format_metrics_table(metrics)))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2))
        print(f"written to {args.output}")
    if report is not None:
        history = logged_history(args.checkpoint)
        write_evaluation_report(report, exact, out, args.split, history)
        print(f"report written to {report}")
    return 0


def _report_path(args: argparse.Namespace) -> Path | None:
    """``--report``, or ``evaluate-<checkpoint>-<split>.html`` beside the checkpoint (``None``
    with ``--no-report``); checked before the evaluation so a bad path costs no time."""
    if args.report and args.no_report:
        raise ValueError("--report FILE and --no-report contradict each other; pass one")
    if args.no_report:
        return None
    checkpoint = Path(args.checkpoint)
    folder, stem = (
        (checkpoint, "last") if checkpoint.is_dir() else (checkpoint.parent, checkpoint.stem)
    )
    path = Path(args.report) if args.report else folder / f"evaluate-{stem}-{args.split}.html"
    if path.is_dir():
        raise ValueError(
            f"--report {path} is a folder; pass a file name such as {path / 'report.html'}"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"the folder of the report {path} does not exist; create it or pass --report FILE"
        )
    return path


def _through_index(args: argparse.Namespace, out: dict) -> dict[str, float]:
    """The retrieval metrics of the fused embeddings searched through an index of the method."""
    from rankedlist.evaluation import get_protocol
    from rankedlist.retrieval import approximate_retrieval_metrics

    emb, labels, q = out["embeddings"], out["labels"], out["query_count"]
    gallery = (emb[q:], labels[q:]) if q < len(labels) else ()
    params = {"nprobe": args.nprobe, "ef": args.ef, "nlist": args.nlist}
    return approximate_retrieval_metrics(
        emb[:q], labels[:q], *gallery, method=args.index_method,
        ks=get_protocol(out["protocol"]).ks, **{k: v for k, v in params.items() if v is not None},
    )  # fmt: skip
