"""``rankedlist index build``, ``rankedlist index add`` and ``rankedlist index search``.

The work is :mod:`rankedlist.retrieval.index_actions`. Exit code 0, or 2 after one ``error:``
line (what is wrong, the file, the fix) for a bad input or a failed read or write; ``--debug``
raises the error instead, with its traceback. Warnings (a skipped unreadable image) are printed
as one ``warning:`` line each.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from rankedlist.cli.errors import one_line, report_errors

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``index`` (with ``build``, ``add`` and ``search``) to ``parser.add_subparsers()``."""
    index = subparsers.add_parser(
        "index",
        help="build a retrieval index of a folder of images with a trained model, add to it, "
        "and search it",
        description="Embed a folder of images with a trained checkpoint (or its export) "
        "into an index folder, exact or approximate (faiss ivf / hnsw), or into a Milvus "
        "collection (--backend milvus: Milvus Lite in a local file, or a Milvus server or "
        "cluster), add images to it, and find the nearest indexed images of query images.",
    )
    actions = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    _add_build_parser(actions)
    _add_add_parser(actions)
    _add_search_parser(actions)
    return index


def _add_build_parser(actions: Any) -> None:
    from rankedlist.retrieval.index_methods import AUTO_EXACT_BELOW, HNSW_EF_SEARCH

    build = actions.add_parser(
        "build",
        help="embed every image under a folder into an index folder or a Milvus collection",
        description="Embed every image under --images (recursive) with a run's checkpoint or a "
        "model exported by `rankedlist export` and write the index (embeddings.npy, items.json, "
        "meta.json, and index.faiss for an approximate method) to --out, or with --backend "
        "milvus into "
        "--collection at --uri.",
    )
    _add_model_options(build, required=True)
    build.add_argument("--images", required=True, help="the folder of images to index")
    build.add_argument(
        "--out", help="the index folder to write (replaced); required with --backend faiss"
    )
    _add_backend_options(build, "write (replaced once the new one is complete)")
    build.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="label each image by its class sub-folder (IMAGES/<class>/...) and print the "
        "index's Recall@K against itself",
    )
    build.add_argument(
        "--skip-corrupt", action="store_true", help="leave out unreadable images with a warning"
    )
    build.add_argument(
        "--method",
        default="auto",
        help=f"exact (faiss IndexFlatIP; Milvus FLAT), ivf (IndexIVFFlat; IVF_FLAT) or hnsw "
        f"(IndexHNSWFlat; HNSW), all by inner product of normalised embeddings; auto "
        f"(default): exact below {AUTO_EXACT_BELOW:,} images, ivf from there",
    )
    build.add_argument(
        "--nlist", type=int, help="ivf: number of lists (default: power of two >= sqrt(N))"
    )
    build.add_argument(
        "--nprobe", type=int, help="ivf: lists a search scans by default (default max(8, nlist/64))"
    )
    build.add_argument(
        "--ef", type=int, help=f"hnsw: candidates a search explores by default ({HNSW_EF_SEARCH})"
    )
    _add_runtime_options(build)


def _add_add_parser(actions: Any) -> None:
    add = actions.add_parser(
        "add",
        help="embed the images under a folder and append them to an existing index",
        description="Embed every image under --images with the index's model and append them "
        "to the index, without rebuilding it (an ivf index keeps its trained lists, an hnsw "
        "index inserts them into its graph). An index with labels labels the new images by "
        "their class sub-folder. One build or add per index at a time: a second one is refused "
        "with the process that holds the index.",
    )
    add.add_argument(
        "--index", help="an index folder from `index build`; required with --backend faiss"
    )
    _add_backend_options(add, "add to (all images or none become visible)")
    add.add_argument("--images", required=True, help="the folder of images to add")
    _add_model_options(add, required=False)
    add.add_argument(
        "--skip-corrupt", action="store_true", help="leave out unreadable images with a warning"
    )
    _add_other_model_option(add)
    _add_runtime_options(add)


def _add_search_parser(actions: Any) -> None:
    search = actions.add_parser(
        "search",
        help="find the nearest indexed images of query images",
        description="Embed the query images with the index's model and print their nearest "
        "indexed images with cosine similarities.",
    )
    search.add_argument(
        "--index", help="an index folder from `index build`; required with --backend faiss"
    )
    _add_backend_options(search, "search")
    _add_model_options(search, required=False)
    search.add_argument("queries", nargs="+", metavar="QUERY", help="image files or folders")
    search.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    search.add_argument(
        "--nprobe", type=int, help="ivf index: lists to scan (default: the index's)"
    )
    search.add_argument(
        "--ef", type=int, help="hnsw index: candidates to explore (default: the index's)"
    )
    search.add_argument("--picture", help="also draw the results into this PNG")
    search.add_argument("--json", dest="json_out", help="also write the results to this JSON")
    search.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip unreadable query images with a warning (by default one is an error)",
    )
    _add_other_model_option(search)
    _add_runtime_options(search)


def _add_backend_options(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="faiss (default): an index folder; milvus: a Milvus collection (needs pip install "
        "'rankedlist[milvus]')",
    )
    parser.add_argument(
        "--uri",
        help="--backend milvus: a Milvus Lite database, a local path ending in .db (embedded, "
        "one process at a time), or a Milvus server or cluster address (http://host:19530)",
    )
    parser.add_argument(
        "--collection",
        help=f"--backend milvus: the collection to {verb}; default rankedlist",
    )


def _add_model_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    default = "" if required else " (default: the model the index was built with)"
    group.add_argument(
        "--checkpoint", help=f"a run's .pt file or run folder that embeds the images{default}"
    )
    group.add_argument(
        "--model",
        help="a model file from `rankedlist export` that embeds the images: .onnx (run by "
        "onnxruntime, pip install 'rankedlist[export]'), .pt2 (torch.export) or .ts "
        f"(TorchScript){default}",
    )


def _add_other_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-other-model",
        action="store_true",
        help="embed with --checkpoint / --model even when its weights are not those that built "
        "the index (by default refused: the similarities would mean nothing)",
    )


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the ``index`` action chosen on the command line.

    A bad input or a failed read or write (``ValueError``, ``TypeError``, any ``OSError``:
    a missing or unreadable file, an output folder that is not an index, a full or read-only
    disk, an undecodable image) is printed as one ``error:`` line and returns 2; with
    ``--debug`` it is raised, traceback and all.
    """
    action = {"build": _build, "add": _add, "search": _search}[args.index_command]
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every warning of this command, even one seen before
        if not getattr(args, "debug", False):
            warnings.showwarning = _print_warning
        return report_errors("index", action, args)


def _build(args: argparse.Namespace) -> int:
    from rankedlist.retrieval.index_actions import index_build

    return index_build(
        args.images, args.out, backend=args.backend, uri=args.uri, collection=args.collection,
        checkpoint=args.checkpoint, model=args.model,
        labels_from_folders=args.labels_from_folders, method=args.method, nlist=args.nlist,
        nprobe=args.nprobe, ef=args.ef, **_embedding(args),
    )  # fmt: skip


def _add(args: argparse.Namespace) -> int:
    from rankedlist.retrieval.index_actions import index_add

    return index_add(
        args.index, args.images, backend=args.backend, uri=args.uri, collection=args.collection,
        checkpoint=args.checkpoint, model=args.model,
        allow_other_model=args.allow_other_model, **_embedding(args),
    )  # fmt: skip


def _embedding(args: argparse.Namespace) -> dict[str, Any]:
    """How ``build`` and ``add`` embed images: the loader."""
    return {
        "batch_size": args.batch_size,
        "device": args.device,
        "num_workers": args.num_workers,
        "progress": not args.no_progress,
        "skip_corrupt": args.skip_corrupt,
    }


def _search(args: argparse.Namespace) -> int:
    from rankedlist.retrieval.index_actions import index_search

    return index_search(
        args.index, args.queries, backend=args.backend, uri=args.uri, collection=args.collection,
        k=args.k, checkpoint=args.checkpoint, model=args.model,
        nprobe=args.nprobe, ef=args.ef, picture=args.picture, json_out=args.json_out,
        allow_other_model=args.allow_other_model, skip_corrupt=args.skip_corrupt,
        device=args.device, batch_size=args.batch_size, progress=not args.no_progress,
    )  # fmt: skip


def _print_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """``warnings.showwarning`` for the command line: ``warning: <message>``, no source line."""
    print(f"warning: {one_line(message)}", file=sys.stderr)
