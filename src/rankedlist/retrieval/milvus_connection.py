"""One pymilvus client for both kinds of Milvus: a Milvus Lite database (a local path ending in
``.db``, embedded in this process) or a Milvus server or cluster (``http://host:19530``).

:func:`connect` opens either with a short timeout, so an unreachable server is one line at once
rather than a hang; :func:`milvus_errors` turns what the server answers (a ``MilvusException``)
into one line naming the URI and the collection. pymilvus and milvus-lite log every failed call
with its traceback; their loggers are quietened here, since the error itself says it all.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_COLLECTION",
    "check_collection_name",
    "check_uri",
    "connect",
    "is_lite",
    "milvus_errors",
]

#: Seconds to wait for a server before saying it is unreachable.
CONNECT_TIMEOUT_S = 10.0
#: The collection of ``--collection`` left out.
DEFAULT_COLLECTION = "rankedlist"
_SCHEMES = ("http://", "https://", "tcp://")
_FEATURE = "Milvus indexes (`rankedlist index ... --backend milvus`)"


def is_lite(uri: str) -> bool:
    """A Milvus Lite database (a local path) rather than a server address."""
    return not uri.startswith(_SCHEMES)


def check_uri(uri: str) -> str:
    """``uri`` checked: a server address (http, https, tcp) or a local path ending in ``.db``."""
    if not isinstance(uri, str) or not uri:
        raise ValueError("--uri is empty: pass a Milvus Lite file (x.db) or http://host:19530")
    if "://" in uri and not uri.startswith(_SCHEMES):
        raise ValueError(
            f"--uri {uri} is neither a Milvus server address (http://host:19530, https://..., "
            "tcp://...) nor a local Milvus Lite file; fix the address"
        )
    if is_lite(uri) and not uri.endswith(".db"):
        raise ValueError(
            f"--uri {uri}: a Milvus Lite database is a local path ending in .db (e.g. "
            "index.db); a server is http://host:19530"
        )
    return uri


def check_collection_name(name: str) -> str:
    """Milvus's rule for names: a letter or ``_`` first, then letters, digits and ``_``."""
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= 200
        and (name[0].isascii() and (name[0].isalpha() or name[0] == "_"))
        and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    )
    if not ok:
        raise ValueError(
            f"--collection {name!r} is not a valid Milvus collection name: use letters, digits "
            "and _ (a letter or _ first, at most 200 characters)"
        )
    return name


def _quiet_loggers() -> None:
    for name in ("pymilvus", "milvus_lite"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def connect(uri: str, *, must_exist: bool, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A ``pymilvus.MilvusClient`` for ``uri``.

    ``must_exist``: a Milvus Lite database must be there already (``add`` and ``search``);
    ``build`` creates one. Raises ConnectionError (one line) when the server does not answer
    within ``timeout`` seconds or the Lite database is open in another process.
    """
    from rankedlist.extras import require

    check_uri(uri)
    # gRPC's C core prints keep-alive notices ("too_many_pings") to stderr during long calls;
    # pymilvus raises every real failure as an exception, which is what the user is shown.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    pymilvus = require("pymilvus", "milvus", _FEATURE)
    _quiet_loggers()
    lite = is_lite(uri)
    if lite:
        require("milvus_lite", "milvus", _FEATURE)
        path = Path(uri)
        if must_exist and not path.exists():
            raise FileNotFoundError(
                f"no Milvus Lite database at {uri}: build one with `rankedlist index build "
                f"--backend milvus --uri {uri}`, or fix --uri"
            )
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"{uri} is a file, not a Milvus Lite database (a folder this version of "
                "milvus-lite writes): choose another --uri"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return pymilvus.MilvusClient(uri=uri, timeout=timeout)
    except pymilvus.exceptions.MilvusException as err:
        if lite and _lite_locked(Path(uri)):
            raise ConnectionError(
                f"the Milvus Lite database {uri} is open in another process (Milvus Lite serves "
                "one process at a time): wait for it to finish, or share the database through "
                f"a server (`milvus-lite server --data-dir {uri}`, then --uri http://HOST:19530)"
            ) from None
        what = "open the Milvus Lite database" if lite else "reach the Milvus server"
        raise ConnectionError(
            f"cannot {what} at {uri} within {timeout:g} s ({_reason(err)}); check that it runs "
            "and the address and port, or fix --uri"
        ) from None


def _lite_locked(path: Path) -> bool:
    """Whether another process holds the Lite database's lock file."""
    import fcntl

    lock = path / "LOCK"
    if not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _reason(err: BaseException) -> str:
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return " ".join(str(message).split())


@contextlib.contextmanager
def milvus_errors(uri: str, collection: str) -> Iterator[None]:
    """Raise what Milvus answers inside the block as one line (ValueError, or ConnectionError
    when the server went away) naming ``uri`` and ``collection``."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as err:
        reason = _reason(err)
        if "unavailable" in reason.lower() or "connect" in reason.lower():
            raise ConnectionError(
                f"lost the Milvus server at {uri} (collection {collection}): {reason}; check "
                "that it runs and retry"
            ) from None
        raise ValueError(f"Milvus at {uri}, collection {collection}: {reason}") from None
