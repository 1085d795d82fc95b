"""A rankedlist index as one Milvus collection: its schema, the facts it records, its writer's
lease and the replacement of a collection by a new build.

Each row holds its vector and what a search answers with: ``id`` (the row, 0, 1, ...: the
order the items were added in, which breaks ties between equal similarities as the faiss index
does), ``embedding`` (L2-normalised float32, searched by inner product), ``item`` (the image
path, relative to the index's ``images_root``), ``label`` (-1 without labels) and
``class_name``. The collection's properties record the rest, each a string:

* ``rankedlist.format`` (:data:`FORMAT`) and ``rankedlist.format_version``;
* ``rankedlist.num_items``: the rows that searches see. An ``add`` writes its rows after them
  and then raises this count (with the new ``meta``, in one change of the properties), so a
  search never sees part of an add, and rows a killed ``add`` left behind stay invisible until
  the next ``add`` deletes them;
* ``rankedlist.meta``: JSON, the model (checkpoint or exported file, its fingerprint, input
  contract), ``images_root`` and the class names, as an index folder's ``meta.json`` has them;
* ``rankedlist.method``: JSON, the method and its Milvus index type and parameters;
* ``rankedlist.has_labels``, ``rankedlist.embedding_dim``;
* ``rankedlist.writer``: JSON naming the process that is writing (host, process id, action,
  start), empty when none: one writer per collection, as an index folder's lock gives.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from rankedlist.folder_lock import FolderBusyError

__all__ = [
    "FORMAT",
    "ITEM_MAX_LENGTH",
    "KEY",
    "build_name",
    "check_writer",
    "create_collection",
    "new_lease",
    "read_properties",
    "release_lease",
    "settle_collection",
    "take_lease",
    "write_properties",
]

FORMAT = "rankedlist-milvus-index"
FORMAT_VERSION = "1"
#: The bytes an item name may take (Milvus's VARCHAR limit is 65,535).
ITEM_MAX_LENGTH = 4096
_CLASS_MAX_LENGTH = 1024
# A new build is written under this name beside the collection, then renamed to it.
_BUILD_SUFFIX = "__rankedlist_build"
# Seconds between writing a lease and reading it back (two writers racing: the later one wins).
_LEASE_SETTLE_S = 0.3
KEY = {
    name: f"rankedlist.{name}"
    for name in (
        "format",
        "format_version",
        "num_items",
        "meta",
        "method",
        "has_labels",
        "embedding_dim",
        "writer",
        "complete",
    )
}


def build_name(collection: str) -> str:
    """The name a new build of ``collection`` is written under before it takes its place."""
    return collection + _BUILD_SUFFIX


def _index_param_class() -> type:
    from pymilvus.milvus_client.index import IndexParam

    class BothSpellings(IndexParam):
        """pymilvus 3 sends the build parameters as flat keys (``nlist``, ``M``), which a
        Milvus server reads; Milvus Lite reads only the JSON ``params`` key that pymilvus 2
        sent, which a server reads too. Both are sent, so both build what was asked."""

        def __init__(self, field_name: str, index_type: str, metric_type: str, params: dict):
            super().__init__(field_name, index_type, "", metric_type=metric_type, **params)
            self.build_params = dict(params)

        def get_index_configs(self) -> dict:
            configs = dict(super().get_index_configs())
            if self.build_params:
                configs["params"] = dict(self.build_params)
            return configs

    return BothSpellings


def _IndexParam(field_name: str, **index_params: Any) -> Any:  # noqa: N802 - builds one
    return _index_param_class()(field_name, **index_params)


def create_collection(
    client: Any, name: str, dim: int, index_params: dict[str, Any], properties: dict[str, str]
) -> None:
    """Create ``name``: the rows' schema, the vector index, the properties; consistency
    ``Strong``, so a search sees every row written before it."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("item", DataType.VARCHAR, max_length=ITEM_MAX_LENGTH)
    schema.add_field("label", DataType.INT64)
    schema.add_field("class_name", DataType.VARCHAR, max_length=_CLASS_MAX_LENGTH)
    index = client.prepare_index_params()
    index.append(_IndexParam("embedding", **index_params))
    client.create_collection(name, schema=schema, consistency_level="Strong", properties=properties)
    # Not waited for: the collection is empty, and waiting asks the server for a timestamp,
    # which Milvus Lite does not serve (it logs a traceback).
    client.create_index(name, index, sync=False)
    client.load_collection(name)


def read_properties(client: Any, name: str, uri: str) -> dict[str, str]:
    """The collection's properties; raises when it is missing or not a rankedlist index."""
    if not client.has_collection(name):
        there = ", ".join(sorted(client.list_collections())) or "none"
        raise FileNotFoundError(
            f"Milvus at {uri} has no collection {name} (its collections: {there}); build it "
            f"with `rankedlist index build --backend milvus --uri {uri} --collection {name}`, "
            "or fix --collection"
        )
    props = dict(client.describe_collection(name).get("properties") or {})
    if props.get(KEY["format"]) != FORMAT:
        raise ValueError(
            f"collection {name} at {uri} is not a rankedlist index (it records no "
            f"{KEY['format']}): choose another --collection; rankedlist does not touch it"
        )
    if props.get(KEY["format_version"]) != FORMAT_VERSION:
        raise ValueError(
            f"collection {name} at {uri} has format version "
            f"{props.get(KEY['format_version'])!r}, from a newer rankedlist: upgrade rankedlist"
        )
    return props


def write_properties(client: Any, name: str, values: dict[str, str]) -> None:
    """Change some properties of ``name`` in one call."""
    client.alter_collection_properties(name, properties=values)


def _holder_alive(holder: dict[str, Any]) -> bool:
    """A lease's process is alive; one on another host is taken to be (it cannot be asked)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _busy(name: str, uri: str, holder: dict[str, Any]) -> FolderBusyError:
    return FolderBusyError(
        f"collection {name} at {uri} is being written by `rankedlist {holder.get('action')}` "
        f"(process {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}): "
        "wait for it to finish and retry (a lease whose process died on this host is taken over)"
    )


def new_lease(action: str) -> dict[str, Any]:
    """The record of this process writing: ``token`` tells it from any other."""
    return {
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "action": action,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def check_writer(props: dict[str, str], name: str, uri: str) -> None:
    """Raise FolderBusyError when the properties name a live writer."""
    holder = json.loads(props.get(KEY["writer"]) or "{}")
    if holder and _holder_alive(holder):
        raise _busy(name, uri, holder)


def take_lease(client: Any, name: str, uri: str, action: str) -> dict[str, Any]:
    """Make this process the collection's one writer, or raise FolderBusyError naming the live
    one. A lease left by a dead process of this host is taken over."""
    check_writer(read_properties(client, name, uri), name, uri)
    lease = new_lease(action)
    write_properties(client, name, {KEY["writer"]: json.dumps(lease)})
    time.sleep(_LEASE_SETTLE_S)
    now = json.loads(read_properties(client, name, uri).get(KEY["writer"]) or "{}")
    if now.get("token") != lease["token"]:
        raise _busy(name, uri, now)
    return lease


def release_lease(client: Any, name: str, lease: dict[str, Any], uri: str) -> None:
    """Clear the lease if it is still ours (best effort: a lost server keeps it, and the next
    writer on this host takes it over)."""
    try:
        props = read_properties(client, name, uri)
        held = json.loads(props.get(KEY["writer"]) or "{}")
        if held.get("token") == lease["token"]:
            write_properties(client, name, {KEY["writer"]: ""})
    except Exception:  # noqa: BLE001 - the error being raised already is the one to report
        pass


def settle_collection(client: Any, name: str) -> None:
    """Finish a build a kill interrupted between dropping the old collection and renaming the
    new one (complete) into its place; a build that did not complete is left for the next
    build to drop."""
    staged = build_name(name)
    if client.has_collection(name) or not client.has_collection(staged):
        return
    props = dict(client.describe_collection(staged).get("properties") or {})
    if props.get(KEY["format"]) == FORMAT and props.get(KEY["complete"]) == "1":
        client.rename_collection(staged, name)
