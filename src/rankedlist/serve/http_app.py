"""The HTTP API of a :class:`~rankedlist.serve.search_service.SearchService` (FastAPI).

``POST /search`` and ``POST /embed`` take one or more image files in the multipart field
``images``; ``GET /health``, ``GET /info``, ``GET /items/{item_id}/thumbnail``, the search page
at ``/`` and the OpenAPI schema (``/openapi.json``) with its Swagger UI at ``/docs``, served from
the installed ``fastapi-swagger`` rather than FastAPI's default CDN, so it works where the
server has no internet (its users' browsers may not either). Every refusal is a 4xx
whose JSON ``detail`` is one line: a bad upload, a request over the limits (the body is
counted before FastAPI parses it), a malformed form, an unknown item; an index that cannot be
searched now (a Milvus server gone, a collection rebuilt with another model) is a 503 saying
why.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, and
# UploadFile is imported inside the function that declares them (fastapi is an extra).
from typing import Annotated, Any

from rankedlist.extras import require
from rankedlist.serve.index_source import IndexUnavailable
from rankedlist.serve.search_service import SearchService
from rankedlist.serve.thumbnails import ItemNotFound
from rankedlist.serve.upload_images import UploadRejected, decode_upload

__all__ = ["RequestBodyLimit", "create_app"]

_API_DESCRIPTION = (
    "Nearest images of an uploaded image in a rankedlist index: `POST /search` with one or more "
    "files in the form field `images` (and `k`, optional `classes` and `min_similarity`); "
    "`POST /embed` for the embeddings themselves. Thumbnails are served by item id only."
)


def create_app(service: SearchService) -> Any:
    """The ASGI application: the FastAPI app behind :class:`RequestBodyLimit`."""
    require("fastapi", "serve", "rankedlist serve")
    require("python_multipart", "serve", "image uploads to rankedlist serve")
    from fastapi import FastAPI

    from rankedlist import __version__

    app = FastAPI(
        title="rankedlist search",
        version=__version__,
        description=_API_DESCRIPTION,
        docs_url=None,  # our own /docs below: FastAPI's loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.state.service = service
    _add_error_handlers(app)
    _add_routes(app, service)
    _add_api_docs(app)
    return RequestBodyLimit(app, service.limits.max_request_bytes)


def _add_api_docs(app: Any) -> None:
    """``/docs``: Swagger UI for ``/openapi.json``, its script and style served by this server
    (``fastapi-swagger`` ships them; Swagger UI 5, which reads FastAPI's OpenAPI 3.1)."""
    require("fastapi_swagger", "serve", "the API docs page of rankedlist serve")
    from fastapi_swagger import patch_fastapi

    patch_fastapi(app, redirect_from_root_to_docs=False, title=f"{app.title}: API")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _add_error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(UploadRejected)
    async def rejected(request: Any, exc: UploadRejected) -> Any:
        return JSONResponse({"detail": _one_line(exc.reason)}, status_code=exc.status)

    @app.exception_handler(ItemNotFound)
    async def not_found(request: Any, exc: ItemNotFound) -> Any:
        return JSONResponse({"detail": _one_line(exc)}, status_code=404)

    @app.exception_handler(IndexUnavailable)
    async def unavailable(request: Any, exc: IndexUnavailable) -> Any:
        return JSONResponse({"detail": _one_line(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        message = f"{where}: {first.get('msg', 'invalid request')}"
        if first.get("type") == "missing" and where == "images":
            message = "no image: send one or more image files in the multipart field 'images'"
        return JSONResponse({"detail": _one_line(message)}, status_code=422)


def _read_uploads(uploads: list[Any], service: SearchService) -> list[Any]:
    """The uploaded files as RGB images; refuses too many, and each bad one (in order)."""
    limits = service.limits
    if len(uploads) > limits.max_images:
        raise UploadRejected(
            413,
            f"{len(uploads)} images in one request, over this server's limit of "
            f"{limits.max_images}: send them in several requests",
        )
    images = []
    for i, upload in enumerate(uploads):
        name = upload.filename or f"image {i + 1}"
        data = upload.file.read(limits.max_image_bytes + 1)
        images.append(decode_upload(data, name, limits))
    return images


def _add_routes(app: Any, service: SearchService) -> None:
    from fastapi import File, Form, UploadFile
    from fastapi.responses import HTMLResponse, Response

    from rankedlist.serve.search_page import SEARCH_PAGE

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return SEARCH_PAGE

    @app.get("/health")
    def health() -> dict[str, Any]:
        """The server is up and its index can be searched."""
        return {"status": "ok", "index_size": service.size()}

    @app.get("/info")
    def info() -> dict[str, Any]:
        """The model (fingerprint, runtime), the index (size, method, reloads), the batching
        counters and the request limits."""
        return service.info()

    @app.post("/search")
    def search(
        images: Annotated[list[UploadFile], File(description="one or more image files")],
        k: Annotated[int, Form(description="neighbours per image")] = 10,
        classes: Annotated[
            list[str] | None, Form(description="keep only items of these classes")
        ] = None,
        min_similarity: Annotated[
            float | None, Form(description="keep only items at least this similar")
        ] = None,
    ) -> dict[str, Any]:
        """Each uploaded image's k nearest items of the index, most similar first."""
        with service.batcher.expecting():
            found = service.search(_read_uploads(images, service), k, classes, min_similarity)
        names = [u.filename or f"image {i + 1}" for i, u in enumerate(images)]
        return {
            "k": k,
            "results": [
                {"query": name, "neighbors": hits} for name, hits in zip(names, found, strict=True)
            ],
        }

    @app.post("/embed")
    def embed(
        images: Annotated[list[UploadFile], File(description="one or more image files")],
    ) -> dict[str, Any]:
        """The L2-normalised embedding of each uploaded image (the index's model)."""
        with service.batcher.expecting():
            emb = service.embed(_read_uploads(images, service))
        return {
            "model_fingerprint": service.index_model.meta.get("model_fingerprint"),
            "dim": int(emb.shape[1]),
            "embeddings": emb.tolist(),
        }

    @app.get(
        "/items/{item_id}/thumbnail",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such item"}},
    )
    def thumbnail(item_id: str) -> Response:
        """The PNG thumbnail of an item of the index, by the item id /search returns."""
        return Response(
            service.thumbnail(item_id),
            media_type="image/png",
            headers={"Cache-Control": "max-age=300"},
        )


class RequestBodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app sees
    it (by its ``Content-Length``, or counted as it arrives when it has none); a body within
    the limit is handed on whole."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, f"{int(declared):,} bytes")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send, f"more than {self.max_bytes:,} bytes")
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, when the client goes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, size: str) -> None:
        import json

        reason = (
            f"the request body is {size}, over this server's limit of {self.max_bytes:,}: send "
            "fewer or smaller images"
        )
        body = json.dumps({"detail": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
