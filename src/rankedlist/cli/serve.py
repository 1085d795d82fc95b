"""``rankedlist serve``: an index and its model as an HTTP search API and a search page.

The work is :func:`rankedlist.serve.server.serve`. The index, the model and the address are
checked before the server starts: a bad one is one ``error:`` line and exit code 2 (``--debug``
raises it instead, with its traceback). A stopped server (Ctrl-C, SIGTERM) exits with 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from rankedlist.cli.errors import report_errors

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to ``parser.add_subparsers()``; returns its parser."""
    serve = subparsers.add_parser(
        "serve",
        help="serve an index over HTTP: a search API (FastAPI on uvicorn) and a search page",
        description="Serve an index folder from `rankedlist index build` (or, with --backend "
        "milvus, a Milvus collection that several servers can share): POST /search (image "
        "uploads -> nearest items with class names, similarities, item ids and paths), POST "
        "/embed, GET /health, GET /info, thumbnails of the indexed items by id, a search page at "
        "/ and the OpenAPI docs at /docs. Concurrent requests share forward passes; an `index "
        "add` by another process is picked up between requests. Needs pip install "
        "'rankedlist[serve]'.",
    )
    _add_index_options(serve)
    _add_model_options(serve)
    _add_server_options(serve)
    _add_limit_options(serve)
    return serve


def _add_index_options(serve: argparse.ArgumentParser) -> None:
    """What is served: an index folder or a Milvus collection."""
    serve.add_argument(
        "--index", help="the index folder to serve (read-only); required with --backend faiss"
    )
    serve.add_argument(
        "--backend",
        choices=("faiss", "milvus"),
        default="faiss",
        help="faiss (default): an index folder; milvus: a Milvus collection from `index build "
        "--backend milvus` (needs pip install 'rankedlist[milvus]')",
    )
    serve.add_argument(
        "--uri",
        help="--backend milvus: a Milvus Lite database, a local path ending in .db (one process "
        "at a time), or a Milvus server or cluster address (http://host:19530) that several "
        "servers can share",
    )
    serve.add_argument(
        "--collection", help="--backend milvus: the collection to serve; default rankedlist"
    )


def _add_model_options(serve: argparse.ArgumentParser) -> None:
    """The model that embeds the queries, and whether it must be the index's."""
    model = serve.add_mutually_exclusive_group()
    model.add_argument(
        "--model",
        help="an exported model file from `rankedlist export` that embeds the queries: .onnx "
        "(onnxruntime, on the CPU), .pt2 (torch.export) or .ts (TorchScript), on --device "
        "(default: the model the index was built with)",
    )
    model.add_argument(
        "--checkpoint",
        help="a run's .pt file or run folder that embeds the queries with PyTorch (default: the "
        "model the index was built with)",
    )
    serve.add_argument(
        "--allow-other-model",
        action="store_true",
        help="serve with a model whose weights are not the index's (its similarities to the "
        "indexed items mean nothing; for debugging only)",
    )


def _add_server_options(serve: argparse.ArgumentParser) -> None:
    """Where and how the server runs."""
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it "
        "to the network, without authentication)",
    )
    serve.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own copy of the model and the index (default 1)",
    )
    serve.add_argument(
        "--device",
        default="auto",
        help="where a checkpoint or a .pt2 / TorchScript export runs: auto, cpu, cuda, cuda:N",
    )
    serve.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (default warning; info logs every request)",
    )


def _add_limit_options(serve: argparse.ArgumentParser) -> None:
    """Batching, and the limits every request is held to."""
    serve.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="how long a query waits for others to share its forward pass (default 5 ms)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=32, help="the most images in one forward pass (32)"
    )
    serve.add_argument(
        "--max-image-mb",
        type=float,
        default=10.0,
        help="the largest uploaded file, in MiB (default 10); larger ones get 413",
    )
    serve.add_argument(
        "--max-request-mb",
        type=float,
        default=64.0,
        help="the largest request body, in MiB (default 64; read into memory before it is "
        "parsed); larger ones get 413",
    )
    serve.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="the most pixels (width x height) of an uploaded image (default 40,000,000); PIL's "
        "decompression-bomb guard is set to it",
    )
    serve.add_argument(
        "--max-images", type=int, default=32, help="the most images in one request (default 32)"
    )
    serve.add_argument(
        "--max-k", type=int, default=100, help="the most neighbours one query may ask (100)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``rankedlist serve``; one ``error:`` line and exit code 2 on a bad input."""
    return report_errors("serve", _serve, args)


def _serve(args: argparse.Namespace) -> int:
    try:
        return _start(args)
    except ConnectionError as err:  # a Milvus server that does not answer: the user's to fix
        raise _Unreachable(str(err)) from err


class _Unreachable(ValueError):
    """A server the options name cannot be reached (reported as one line, as a bad option)."""


def _start(args: argparse.Namespace) -> int:
    from rankedlist.serve.server import ServeOptions, serve

    options = ServeOptions(
        index=args.index,
        backend=args.backend,
        uri=args.uri,
        collection=args.collection,
        checkpoint=args.checkpoint,
        model=args.model,
        host=args.host,
        port=args.port,
        workers=args.workers,
        device=args.device,
        allow_other_model=args.allow_other_model,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        max_image_mb=args.max_image_mb,
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        max_k=args.max_k,
        max_request_mb=args.max_request_mb,
        log_level=args.log_level,
    )
    return serve(options)
