"""``rankedlist serve``'s work: check everything, open the service, run uvicorn.

:func:`serve` checks the options and that the address is free, then opens the index (a folder,
or with ``--backend milvus`` a Milvus collection) and its model (so a bad index, model, Milvus
server or port is one line before any server starts) and runs uvicorn on ``127.0.0.1`` unless
another host is asked for. With ``workers`` above 1 uvicorn starts that
many processes; each opens the index and the model itself (:func:`app_from_environment`, the
options passed in :data:`OPTIONS_VARIABLE`) and batches its own requests.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from rankedlist.serve.upload_images import MIB, UploadLimits

__all__ = ["OPTIONS_VARIABLE", "ServeOptions", "app_from_environment", "open_service", "serve"]

#: The environment variable that hands the options to uvicorn's worker processes.
OPTIONS_VARIABLE = "RANKEDLIST_SERVE_OPTIONS"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    """The command line's options (``--x-y`` is ``x_y``)."""

    index: str | None = None
    backend: str = "faiss"
    uri: str | None = None
    collection: str | None = None
    checkpoint: str | None = None
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    device: str = "auto"
    allow_other_model: bool = False
    batch_window_ms: float = 5.0
    max_batch: int = 32
    max_image_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_images: int = 32
    max_k: int = 100
    max_request_mb: float = 64.0
    log_level: str = "warning"

    def limits(self) -> UploadLimits:
        """The request limits these options set."""
        return UploadLimits(
            max_image_bytes=int(self.max_image_mb * MIB),
            max_pixels=self.max_pixels,
            max_images=self.max_images,
            max_request_bytes=int(self.max_request_mb * MIB),
            max_k=self.max_k,
        )

    def check(self) -> None:
        """Raise ValueError naming the option for a value out of range, or for options that
        do not go together (``--index`` with ``--backend milvus``, ``--uri`` without it)."""
        from rankedlist.retrieval.milvus_actions import check_backend_options

        check_backend_options(self.backend, self.index, "--index", self.uri, self.collection)
        if self.backend == "milvus":
            from rankedlist.retrieval.milvus_connection import (
                check_collection_name,
                check_uri,
                is_lite,
            )

            check_uri(self.uri)
            if self.collection is not None:
                check_collection_name(self.collection)
            if self.workers > 1 and is_lite(self.uri):
                raise ValueError(
                    f"--workers {self.workers} with the Milvus Lite file {self.uri}: Milvus Lite "
                    "serves one process at a time; pass --workers 1, or serve the database "
                    f"through a Milvus server (`milvus-lite server --data-dir {self.uri}`, then "
                    "--uri http://HOST:19530)"
                )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be between 1 and 65535, got {self.port}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(
                f"--batch-window-ms must be between 0 and 1000, got {self.batch_window_ms}"
            )
        for option in ("max_image_mb", "max_request_mb"):
            if getattr(self, option) <= 0:
                name = "--" + option.replace("_", "-")
                raise ValueError(f"{name} must be above 0, got {getattr(self, option)}")
        for option in ("max_batch", "max_pixels", "max_images", "max_k"):
            if getattr(self, option) < 1:
                name = "--" + option.replace("_", "-")
                raise ValueError(f"{name} must be at least 1, got {getattr(self, option)}")


def open_service(options: ServeOptions) -> Any:
    """The :class:`~rankedlist.serve.search_service.SearchService` of ``options``."""
    from rankedlist.serve.search_service import open_search_service

    return open_search_service(
        options.index,
        uri=options.uri,
        collection=options.collection,
        checkpoint=options.checkpoint,
        model_file=options.model,
        device=options.device,
        allow_other_model=options.allow_other_model,
        limits=options.limits(),
        window_s=options.batch_window_ms / 1000,
        max_batch=options.max_batch,
    )


def app_from_environment() -> Any:
    """uvicorn's app factory in a worker process: the options from :data:`OPTIONS_VARIABLE`."""
    from rankedlist.serve.http_app import create_app

    options = ServeOptions(**json.loads(os.environ[OPTIONS_VARIABLE]))
    return create_app(open_service(options))


def check_address(host: str, port: int) -> None:
    """Raise ValueError when ``host:port`` cannot be listened on (in use, not this machine's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"--host {host} is not an address of this machine ({err})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"port {port} on {host} is in use by another program: pass another --port"
                ) from None
            raise ValueError(f"cannot listen on {host}:{port} ({err.strerror}): pass another "
                             "--host or --port") from None  # fmt: skip


def serve(options: ServeOptions) -> int:
    """Run the server until it is stopped (Ctrl-C, SIGTERM); 0 after a clean stop."""
    from rankedlist.extras import require

    uvicorn = require("uvicorn", "serve", "rankedlist serve")
    require("fastapi", "serve", "rankedlist serve")
    require("python_multipart", "serve", "image uploads to rankedlist serve")
    from rankedlist.serve.http_app import create_app

    options.check()
    check_address(options.host, options.port)
    service = open_service(options)  # a bad index or model fails here, before any server
    where = f"http://{options.host}:{options.port}"
    if options.host not in _LOOPBACK:
        print(
            f"warning: listening on {options.host}: anyone who reaches this machine can search "
            "the index and see its thumbnails (there is no authentication)",
            file=sys.stderr,
        )
    info = service.info()
    print(
        f"serving {service.source.name} ({info['index']['size']} items, "
        f"{info['index']['method']}) "
        f"with {info['model']['file']} ({info['model']['runtime']}) at {where}/ "
        f"(API docs {where}/docs); Ctrl-C stops",
        flush=True,
    )
    common = {"host": options.host, "port": options.port, "log_level": options.log_level}
    if options.workers == 1:
        try:
            uvicorn.Server(uvicorn.Config(create_app(service), **common)).run()
        finally:
            service.close()
        return 0
    service.close()  # each worker opens its own
    os.environ[OPTIONS_VARIABLE] = json.dumps(dataclasses.asdict(options))
    uvicorn.run(
        "rankedlist.serve.server:app_from_environment",
        factory=True,
        workers=options.workers,
        **common,
    )
    return 0
