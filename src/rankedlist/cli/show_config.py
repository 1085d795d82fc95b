"""``rankedlist show-config``: a recipe fully resolved, overrides applied, as YAML."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``show-config`` to ``parser.add_subparsers()``; returns its parser."""
    show = subparsers.add_parser(
        "show-config", help="print a recipe fully resolved, with overrides"
    )
    show.add_argument("--config", "-c", help="a YAML recipe path or name (default: the defaults)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=0.01")
    return show


def run(args: argparse.Namespace) -> int:
    """Print the resolved config."""
    import yaml

    from rankedlist.training.config import load_config

    config = load_config(args.config or None, args.overrides)  # a path or a recipe name
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0
