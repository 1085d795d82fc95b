"""The ``rankedlist`` command: the top-level parser, assembled from one module per command.

Each command is a module of :mod:`rankedlist.cli` with ``add_parser(subparsers)`` and
``run(args) -> int``; this module only builds the parser from them, moves config overrides
(``key=value``, ``--key.sub value``) to where argparse reads them, and runs the command.

Exit codes: 0 success (or a run stopped by ``--stop-after``); 1 the loss became non-finite;
2 a usage, config or data error (the message says what to fix; ``--debug`` shows the traceback);
130 / 143 interrupted by SIGINT / SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from rankedlist import __version__
from rankedlist.cli import (
    compare,
    convert_checkpoint,
    evaluate,
    export,
    index,
    recipes,
    report,
    serve,
    show_config,
    train,
    tune,
)
from rankedlist.cli.errors import EXIT_USAGE, report_errors

__all__ = ["COMMANDS", "build_parser", "main", "parse_command_line"]

# The commands, in the order `rankedlist --help` lists them.
COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "report": report,
    "recipes": recipes,
    "show-config": show_config,
    "index": index,
    "export": export,
    "tune": tune,
    "compare": compare,
    "convert-checkpoint": convert_checkpoint,
    "serve": serve,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``rankedlist`` parser: the global options, then each command's own parser."""
    parser = argparse.ArgumentParser(
        prog="rankedlist",
        description="Ranked List Loss for deep metric learning: train, evaluate, report.",
        epilog="Run `rankedlist COMMAND --help` for a command's options. Any `section.key=value` "
        "(or `--section.key value`) after a command overrides the recipe.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--version", action="version", version=f"rankedlist {__version__}", help="print the version"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_parser(subparsers)
    return parser


def parse_command_line(
    argv: Sequence[str], parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Parse as ``rankedlist`` does: ``--key.sub value`` and overrides anywhere are accepted."""
    parser = parser or build_parser()
    return parser.parse_args(hoist_overrides(_dashed_to_overrides(list(argv)), parser))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_command_line(argv, parser)
    except ValueError as exc:
        print(f"rankedlist: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help (0) or a usage error (2): return, do not exit
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return report_errors(args.command, COMMANDS[args.command].run, args)
    except BrokenPipeError:
        # The reader of our output left (`rankedlist recipes | head -1`): not an error. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# --------------------------------------------------------------------------- overrides


def _dashed_to_overrides(argv: Sequence[str]) -> list[str]:
    """Turn ``--data.root /x`` and ``--data.root=/x`` into ``data.root=/x`` (no real option
    has a dot in its name, so a dotted one is always a config key)."""
    out, i = [], 0
    while i < len(argv):
        item = argv[i]
        key = item[2:].split("=", 1)[0]
        if not item.startswith("--") or "." not in key:
            out.append(item)
            i += 1
        elif "=" in item:
            out.append(item[2:])
            i += 1
        elif i + 1 < len(argv):
            out.append(f"{key}={argv[i + 1]}")
            i += 2
        else:
            raise ValueError(f"{item} needs a value, e.g. {item} VALUE")
    return out


def hoist_overrides(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Move every ``key=value`` override, and any other bare word (``report``'s run folder),
    right after the command word, in their order.

    argparse fills a ``nargs="*"`` positional only from one run of positionals, so overrides
    after an option (``--resume data.p=16 train.log_every=1``, ``report --split val RUN
    data.root=X``) would be "unrecognized"; and
    ``--resume`` takes an optional path, so it would swallow the first override. Hoisted, any
    order of options and overrides parses the same. A word after an option that takes a value is
    that value, even with a ``=`` in it; after an option whose value is optional (``--resume``)
    it is an override only if it reads as one (``section.key=value``). Only the words decide:
    nothing is looked up on disk.
    """
    argv = list(argv)
    commands = {name: p for name, p in subcommand_parsers(parser).items() if _takes_overrides(p)}
    start = next((i for i, a in enumerate(argv) if a in commands), None)
    if start is None:
        return argv
    takes_value, may_take_value = value_options(commands[argv[start]])
    several = _several_value_options(commands[argv[start]])
    head, rest = argv[: start + 1], argv[start + 1 :]
    overrides, others = [], []
    in_several = False  # after --recipes A B ...: plain words are its values
    for i, item in enumerate(rest):
        previous = rest[i - 1] if i else ""
        if item.startswith("-"):
            in_several = item in several
        is_value = (
            previous in takes_value
            or (previous in may_take_value and not _reads_as_override(item))
            or (in_several and "=" not in item)
        )
        if not item.startswith("-") and not is_value:
            overrides.append(item)
        else:
            others.append(item)
    return head + overrides + others


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The command parsers of ``parser``, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _takes_overrides(command: argparse.ArgumentParser) -> bool:
    return any(action.dest == "overrides" for action in command._actions)


def value_options(command: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The option strings of ``command`` whose next word is their value, and those whose next
    word may be their value (``nargs="?"``, ``"*"``: ``--resume [PATH]``)."""
    takes, may_take = set(), set()
    for action in command._actions:
        if action.option_strings and action.nargs != 0:  # not a flag (store_true, --help)
            optional = action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
            (may_take if optional else takes).update(action.option_strings)
    return takes, may_take


def _several_value_options(command: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``command`` that take several words (``--recipes A B``)."""
    several = (argparse.ONE_OR_MORE, argparse.ZERO_OR_MORE)
    return {
        option
        for action in command._actions
        if action.nargs in several or (isinstance(action.nargs, int) and action.nargs > 1)
        for option in action.option_strings
    }


_CONFIG_KEY = re.compile(r"[A-Za-z_]\w*(\.[^\s./=]+)*")


def _reads_as_override(item: str) -> bool:
    """``section.key=value`` (or ``description=...``): its key names a config section or field,
    so it is an override, not a path such as ``a=b.pt`` or ``runs/x=1/last.pt``."""
    import dataclasses

    from rankedlist.training.config_schema import Config

    key, sep, _ = item.partition("=")
    key = key.strip()
    if not sep or not _CONFIG_KEY.fullmatch(key):
        return False
    return key.split(".")[0] in {f.name for f in dataclasses.fields(Config)}
