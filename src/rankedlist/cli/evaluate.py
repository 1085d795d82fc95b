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
    from rankedlist.training.evaluate_checkpoint import evaluate_checkpoint
    from rankedlist.training.evaluation_pass import format_metrics_table

    out: dict = {}
    metrics = evaluate_checkpoint(
        args.checkpoint, args.split, args.overrides, args.device, embeddings_out=out
    )
    if not metrics:  # a non-zero rank of a distributed evaluation
        return 0
    if args.index_method:
        metrics[f"fused via {args.index_method} index"] = _through_index(args, out)
    elif any(v is not None for v in (args.nprobe, args.ef, args.nlist)):
        raise ValueError("--nprobe, --ef and --nlist need --index-method ivf or hnsw")
    print(f"{args.split} metrics of {args.checkpoint}:")
    print("\n".join(format_metrics_table(metrics)))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2))
        print(f"written to {args.output}")
    return 0


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
