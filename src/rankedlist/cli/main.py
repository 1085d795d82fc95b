"""The ``rankedlist`` command: train, evaluate, list recipes, show a resolved config.

Exit codes: 0 success (or a run stopped by ``--stop-after``); 1 the loss became non-finite;
2 a usage, config or data error (the message says what to fix; ``--debug`` shows the traceback);
130 / 143 interrupted by SIGINT / SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rankedlist import __version__
from rankedlist.training.recipes import find_recipe, list_recipes, recipe_dirs

__all__ = ["main", "build_parser", "find_recipe", "list_recipes", "parse_command_line"]

_EXIT_USAGE = 2
_EXIT_NONFINITE = 1


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser(
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

    evaluate = sub.add_parser(
        "evaluate",
        help="re-evaluate a saved checkpoint on a split",
        description="Rebuild the model of a checkpoint and compute its retrieval metrics.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a .pt file or a run folder")
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train"))
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

    sub.add_parser("recipes", help="list the shipped recipes (and ./configs/*.yaml)")

    show = sub.add_parser("show-config", help="print a recipe fully resolved, with overrides")
    show.add_argument("--config", "-c", help="a YAML recipe path or name (default: the defaults)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    from rankedlist.retrieval.cli_commands import add_index_parser

    add_index_parser(sub)
    from rankedlist.export.cli_commands import add_export_parser
    from rankedlist.tune.cli import add_tune_parser

    add_export_parser(sub)
    add_tune_parser(sub)
    from rankedlist.compare.cli import add_compare_parser

    add_compare_parser(sub)

    convert = sub.add_parser(
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
    return parser


# Options whose next token is their value (never a config override, even if it holds "=").
_VALUE_OPTIONS = frozenset(
    {"--config", "-c", "--checkpoint", "--split", "--device", "--output", "--stop-after",
     "--index-method", "--nprobe", "--ef", "--nlist", "--trials", "--study", "--storage",
     "--out", "--space", "--timeout", "--metric", "--pruner", "--seed",
     "--recipes", "--seeds", "--folds", "--plan", "--sampler-seed"}
)  # fmt: skip
_COMMANDS_WITH_OVERRIDES = ("train", "evaluate", "show-config", "tune", "compare")


def _hoist_overrides(argv: Sequence[str]) -> list[str]:
    """Move every ``key=value`` override right after the command word.

    argparse fills a ``nargs="*"`` positional only from one run of positionals, so overrides
    after an option (``--resume data.p=16 train.log_every=1``) would be "unrecognized"; and
    ``--resume`` takes an optional path, so it would swallow the first override. Hoisted, any
    order of options and overrides parses the same.
    """
    argv = list(argv)
    start = next((i for i, a in enumerate(argv) if a in _COMMANDS_WITH_OVERRIDES), None)
    if start is None:
        return argv
    head, rest = argv[: start + 1], argv[start + 1 :]
    overrides, others = [], []
    for i, item in enumerate(rest):
        previous = rest[i - 1] if i else ""
        is_value = previous in _VALUE_OPTIONS or (previous == "--resume" and Path(item).exists())
        if "=" in item and not item.startswith("-") and not is_value:
            overrides.append(item)
        else:
            others.append(item)
    return head + overrides + others


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


# --------------------------------------------------------------------------- commands


def _cmd_train(args: argparse.Namespace) -> int:
    from rankedlist.training.config import apply_overrides, config_from_dict, load_config
    from rankedlist.training.run_folder import checkpoint_folder
    from rankedlist.training.train import main as train_main

    resume = None
    if args.config is not None:
        config = load_config(find_recipe(args.config), args.overrides)
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from rankedlist.compare.cli import run_compare_command

    return run_compare_command(args)


def _cmd_tune(args: argparse.Namespace) -> int:
    from rankedlist.tune.cli import run_tune_command

    return run_tune_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from rankedlist.export.cli_commands import run_export_command

    return run_export_command(args)


def _cmd_recipes(args: argparse.Namespace) -> int:  # noqa: ARG001
    recipes = list_recipes()
    if not recipes:
        print(f"no recipes found (looked in {', '.join(map(str, recipe_dirs()))})")
        return 0
    width = max(len(name) for name, _ in recipes)
    for name, description in recipes:
        print(f"{name:<{width}}  {description}")
    print("\nrun one with: rankedlist train --config NAME [key=value ...]")
    return 0


def _cmd_show_config(args: argparse.Namespace) -> int:
    import yaml

    from rankedlist.training.config import load_config

    path = find_recipe(args.config) if args.config else None
    print(yaml.safe_dump(load_config(path, args.overrides).to_dict(), sort_keys=False), end="")
    return 0


def _cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from rankedlist.training.checkpoint_convert import convert_checkpoint

    result = convert_checkpoint(args.checkpoint, args.out, trust=args.trust)
    how = "unpickled in full (--trust)" if result.full_unpickle else "read with weights_only=True"
    print(
        f"converted {result.source} ({how}) -> {result.out}: tensors and plain values only, "
        "loads with torch.load(weights_only=True)"
    )
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from rankedlist.retrieval.cli_commands import run_index_command

    return run_index_command(args)


_COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "recipes": _cmd_recipes,
    "show-config": _cmd_show_config,
    "index": _cmd_index,
    "export": _cmd_export,
    "tune": _cmd_tune,
    "compare": _cmd_compare,
    "convert-checkpoint": _cmd_convert_checkpoint,
}


def parse_command_line(
    argv: Sequence[str], parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Parse as ``rankedlist`` does: ``--key.sub value`` and overrides anywhere are accepted."""
    parser = parser or build_parser()
    return parser.parse_args(_hoist_overrides(_dashed_to_overrides(list(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_command_line(argv, parser)
    except ValueError as exc:
        print(f"rankedlist: error: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except SystemExit as exc:  # --help (0) or a usage error (2): return, do not exit
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return _EXIT_USAGE
    try:
        return _COMMANDS[args.command](args)
    except Exception as exc:
        if args.debug:
            raise
        message, code = _describe_error(exc, args.command)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return code


def _describe_error(exc: Exception, command: str) -> tuple[str | None, int]:
    """One line for an error a user can fix (and the exit code), or None for a bug."""
    from rankedlist.data import CorruptImageError, MissingImagesError
    from rankedlist.extras import MissingExtraError
    from rankedlist.models.pretrained import PretrainedWeightsError
    from rankedlist.training.health import NonFiniteLossError
    from rankedlist.training.train import RunInterrupted

    if isinstance(exc, MissingExtraError):
        return str(exc), _EXIT_USAGE
    if isinstance(exc, NonFiniteLossError):
        return str(exc), _EXIT_NONFINITE
    if isinstance(exc, RunInterrupted):
        return str(exc), 128 + int(exc.signum)
    if isinstance(exc, (CorruptImageError, MissingImagesError)) and command in _CONFIG_COMMANDS:
        # The data layer's hint is the Python option; here the way is a config override.
        return _one_line(exc.describe("set data.options.skip_corrupt=true")), _EXIT_USAGE
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError, PretrainedWeightsError)):
        return _one_line(exc), _EXIT_USAGE
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        reason, fix = _DISK_ERRORS[exc.errno]
        where = f" {_DISK_WHERE.get(exc.errno, 'while writing')} {exc.filename}"
        return f"{reason}{where if exc.filename else ''}; {fix}; {_DISK_AFTER}", _EXIT_USAGE
    return None, 1


_CONFIG_COMMANDS = ("train", "evaluate", "tune")
_FREE_SPACE = "free some space there, or choose another folder (train.run_dir=PATH, --out)"
_WRITABLE = "choose a writable folder (train.run_dir=PATH, --out) or make this one writable"
# errno -> (what happened, the fix): a full disk wants space, a read-only one another folder.
_DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device", _FREE_SPACE),
    errno.EDQUOT: ("disk quota exceeded", _FREE_SPACE),
    errno.EROFS: ("read-only file system", _WRITABLE),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("operation not permitted", _WRITABLE),
}
# A permission error may come from a read, too: no "while writing" then.
_DISK_WHERE = {errno.EACCES: "on", errno.EPERM: "on"}
_DISK_AFTER = (
    "files written before stay intact, and a training run continues from its last checkpoint "
    "with --resume"
)


def _one_line(exc: BaseException) -> str:
    """The message on one line (some library messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
