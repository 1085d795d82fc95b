"""``rankedlist index build`` and ``rankedlist index search``.

``add_index_parser(subparsers)`` registers the ``index`` command on the main parser's
sub-parsers; ``run_index_command(args)`` runs the chosen action and returns the exit code: 0, or
2 after printing one ``error:`` line (what is wrong, the file, the fix) for a bad input or a
failed read or write; ``--debug`` raises the error instead, with its traceback. Warnings (a
skipped unreadable image) are printed as one ``warning:`` line each.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["add_index_parser", "cmd_index_build", "cmd_index_search", "run_index_command"]


def add_index_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``index`` (with ``build`` and ``search``) to ``parser.add_subparsers()``."""
    index = subparsers.add_parser(
        "index",
        help="build a retrieval index of a folder of images with a trained model, and search it",
        description="Embed a folder of images with a trained checkpoint into an index folder, "
        "then find the nearest indexed images of query images.",
    )
    actions = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = actions.add_parser(
        "build",
        help="embed every image under a folder into an index folder",
        description="Embed every image under --images (recursive) with the checkpoint's model "
        "and write the index (embeddings.npy, items.json, meta.json) to --out.",
    )
    build.add_argument("--checkpoint", required=True, help="a .pt file or a run folder")
    build.add_argument("--images", required=True, help="the folder of images to index")
    build.add_argument("--out", required=True, help="the index folder to write (replaced)")
    build.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="label each image by its class sub-folder (IMAGES/<class>/...) and print the "
        "index's Recall@K against itself",
    )
    build.add_argument(
        "--skip-corrupt", action="store_true", help="leave out unreadable images with a warning"
    )
    _add_runtime_options(build)
    build.set_defaults(index_handler=cmd_index_build)

    search = actions.add_parser(
        "search",
        help="find the nearest indexed images of query images",
        description="Embed the query images with the index's model and print their nearest "
        "indexed images with cosine similarities.",
    )
    search.add_argument("--index", required=True, help="an index folder from `index build`")
    search.add_argument(
        "--checkpoint",
        help="the model that embeds the queries (default: the checkpoint the index was built with)",
    )
    search.add_argument("queries", nargs="+", metavar="QUERY", help="image files or folders")
    search.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    search.add_argument("--picture", help="also draw the results into this PNG")
    search.add_argument("--json", dest="json_out", help="also write the results to this JSON")
    search.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable query images with a warning (by default one is an error)",
    )
    _add_runtime_options(search)
    search.set_defaults(index_handler=cmd_index_search)
    return index


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_index_command(args: argparse.Namespace) -> int:
    """Run the ``index`` action chosen on the command line.

    A bad input or a failed read or write (``ValueError``, ``TypeError``, any ``OSError``:
    a missing or unreadable file, an output folder that is not an index, a full or read-only
    disk, an undecodable image) is printed as one ``error:`` line and returns 2; with
    ``--debug`` it is raised, traceback and all.
    """
    import torch

    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _print_warning
        try:
            return args.index_handler(args)
        except (ValueError, TypeError, OSError, torch.cuda.OutOfMemoryError) as exc:
            if debug:
                raise
            print(f"error: {_one_line(_error_message(exc, args))}", file=sys.stderr)
            return 2


def _error_message(exc: BaseException, args: argparse.Namespace) -> str:
    """The error's message, in the command line's words where the library speaks Python."""
    import torch

    from rankedlist.data import CorruptImageError

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (
            f"out of GPU memory on {args.device} embedding {args.batch_size} images at a time; "
            "pass a smaller --batch-size or --device cpu"
        )
    if isinstance(exc, CorruptImageError):
        search = args.index_handler is cmd_index_search
        skip = (
            "pass --skip-corrupt to skip unreadable query images with a warning"
            if search
            else "pass --skip-corrupt to leave unreadable images out of the index with a warning"
        )
        path = getattr(exc, "path", None)
        reason = getattr(exc, "reason", None) or (exc.__cause__ and str(exc.__cause__))
        if path is not None and reason:
            what = "query image" if search else "image"
            return f"cannot decode {what} {path}: {reason}. Replace or delete the file, or {skip}"
        return str(exc).replace("pass skip_corrupt=True to skip unreadable images", skip)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        # An errno error that no step above explained (a permission, a failing disk).
        return f"{_os_reason(exc)} (check the path, its permissions and the disk)"
    return str(exc)


def _one_line(text: object) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text).strip())


def _print_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """``warnings.showwarning`` for the command line: ``warning: <message>``, no source line."""
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def cmd_index_build(args: argparse.Namespace) -> int:
    """``rankedlist index build``: embed ``--images`` with ``--checkpoint``, save to ``--out``.

    ``--out`` is checked first (not a file or a folder of other things, writable), so a bad
    output folder fails at once rather than after every image is embedded.
    """
    from rankedlist.retrieval.embedding_index import check_index_destination
    from rankedlist.retrieval.from_checkpoint import build_index_from_checkpoint

    try:
        check_index_destination(args.out)
    except OSError as err:
        raise type(err)(f"--out: {err}") from err
    index = build_index_from_checkpoint(
        args.checkpoint,
        args.images,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        skip_corrupt=args.skip_corrupt,
        labels_from_folders=args.labels_from_folders,
    )
    try:
        out = index.save(args.out)
    except (FileExistsError, NotADirectoryError):
        raise  # the folder changed since the check: the message says what to do
    except OSError as err:
        raise OSError(
            f"could not write the index to {args.out} ({_os_reason(err)}); free disk space or "
            "choose another --out (a previous index there is unchanged)"
        ) from err
    print(
        f"indexed {len(index)} images ({index.dim}-d) from {args.images} with "
        f"{index.meta['checkpoint']} into {out}"
    )
    if index.labels is not None and len(index) > 1:
        metrics = index.evaluate()
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "lone_queries")
        print(f"self-retrieval ({len(index.meta.get('classes', []))} classes): {shown}")
    return 0


def _query_files(queries: list[str]) -> list[Path]:
    from rankedlist.retrieval.embed_images import list_images

    files: list[Path] = []
    for q in queries:
        path = Path(q)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise ValueError(f"query folder {path} holds no image files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"query image {path} not found")
    return files


def _query_labels(files: list[Path], classes: list[str] | None) -> list[int | None] | None:
    """A query's label is known when its parent folder is one of the index's class names."""
    if not classes:
        return None
    lookup = {c: i for i, c in enumerate(classes)}
    labels = [lookup.get(f.parent.name) for f in files]
    return labels if any(label is not None for label in labels) else None


def cmd_index_search(args: argparse.Namespace) -> int:
    """``rankedlist index search``: print (and optionally draw) each query's nearest items."""
    from rankedlist.retrieval.embedding_index import EmbeddingIndex
    from rankedlist.retrieval.from_checkpoint import search_images

    if isinstance(args.k, bool) or args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    index = EmbeddingIndex.load(args.index)
    checkpoint = args.checkpoint or index.meta.get("checkpoint")
    if checkpoint is None:
        raise ValueError(
            f"the index {args.index} does not record its checkpoint: pass --checkpoint"
        )
    if args.checkpoint is None and not Path(checkpoint).exists():
        raise FileNotFoundError(
            f"the checkpoint {checkpoint} that built the index {args.index} is gone: pass "
            "--checkpoint with the run's checkpoint (the same model), or rebuild the index"
        )
    files = _query_files(args.queries)
    results = search_images(
        index,
        checkpoint,
        files,
        args.k,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        skip_corrupt=args.skip_corrupt,
    )
    # With --skip-corrupt an unreadable query has no results (and had its warning).
    found = [(q, hits) for q, hits in zip(files, results, strict=True) if hits]
    files, results = [q for q, _ in found], [hits for _, hits in found]
    for qpath, hits in zip(files, results, strict=True):
        print(f"{qpath}")
        for rank, m in enumerate(hits, 1):
            label = "" if m.label is None else f"  [{_class_name(index, m.label)}]"
            print(f"  {rank:>3}  {m.similarity:.4f}  {m.item}{label}")
    if args.json_out:
        payload = [
            {
                "query": str(q),
                "results": [
                    {
                        "rank": r,
                        "item": m.item,
                        "path": str(m.path),
                        "similarity": m.similarity,
                        "label": m.label,
                    }  # fmt: skip
                    for r, m in enumerate(hits, 1)
                ],
            }
            for q, hits in zip(files, results, strict=True)
        ]
        try:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise OSError(
                f"could not write --json {args.json_out} ({_os_reason(err)}); free disk space "
                "or choose another path"
            ) from err
    if args.picture and files:
        from rankedlist.retrieval.search_picture import save_search_picture

        try:
            picture = save_search_picture(
                files,
                results,
                args.picture,
                args.k,
                query_labels=_query_labels(files, index.meta.get("classes")),
                class_names=index.meta.get("classes"),
            )
        except OSError as err:
            raise OSError(
                f"could not write --picture {args.picture} ({_os_reason(err)}); free disk space "
                "or choose another path"
            ) from err
        print(f"picture: {picture}", file=sys.stderr)
    return 0


def _os_reason(err: OSError) -> str:
    """``strerror: file`` of an errno error (the file may be a temporary one), else the text."""
    if err.strerror and err.filename is not None:
        return f"{err.strerror}: {err.filename}"
    return err.strerror or str(err)


def _class_name(index: Any, label: int) -> str:
    classes = index.meta.get("classes")
    return str(classes[label]) if classes and 0 <= label < len(classes) else f"label {label}"
