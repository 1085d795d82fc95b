"""``rankedlist recipes``: the shipped recipes (and ``./configs/*.yaml``), one line each."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``recipes`` to ``parser.add_subparsers()``; returns its parser."""
    return subparsers.add_parser("recipes", help="list the shipped recipes (and ./configs/*.yaml)")


def run(args: argparse.Namespace) -> int:  # noqa: ARG001
    """Print each recipe's name and description."""
    from rankedlist.training.recipes import list_recipes, recipe_dirs

    recipes = list_recipes()
    if not recipes:
        print(f"no recipes found (looked in {', '.join(map(str, recipe_dirs()))})")
        return 0
    width = max(len(name) for name, _ in recipes)
    for name, description in recipes:
        print(f"{name:<{width}}  {description}")
    print("\nrun one with: rankedlist train --config NAME [key=value ...]")
    return 0
