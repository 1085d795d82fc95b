"""``rankedlist convert-checkpoint``: an older checkpoint rewritten in today's format."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert-checkpoint`` to ``parser.add_subparsers()``; returns its parser."""
    convert = subparsers.add_parser(
        "convert-checkpoint",
        help="rewrite an older checkpoint in the current format (tensors and plain values)",
        description="Checkpoints are read with torch.load(weights_only=True), which runs no code. "
        "This rewrites one that an older rankedlist wrote (numpy's RNG state pickled) so that "
        "it loads that way without an allow-list. A file holding other objects is unpickled in "
        "full only with --trust, which runs any code it holds: use it only for a file you wrote.",
    )
    convert.add_argument("checkpoint", metavar="OLD.pt", help="the checkpoint file to convert")
    convert.add_argument(
        "--out", metavar="NEW.pt", help="write the converted checkpoint here (default: replace it)"
    )
    convert.add_argument(
        "--trust",
        action="store_true",
        help="the file holds objects weights_only refuses: unpickle it in full (runs any code it "
        "holds; only for a checkpoint you wrote yourself)",
    )
    return convert


def run(args: argparse.Namespace) -> int:
    """Convert the checkpoint and say how it was read."""
    from rankedlist.training.checkpoint_convert import convert_checkpoint

    result = convert_checkpoint(args.checkpoint, args.out, trust=args.trust)
    how = "unpickled in full (--trust)" if result.full_unpickle else "read with weights_only=True"
    print(
        f"converted {result.source} ({how}) -> {result.out}: tensors and plain values only, "
        "loads with torch.load(weights_only=True)"
    )
    return 0
