"""The rows of a rankedlist collection in Milvus: a new build written beside the collection,
rows appended in chunks, the item names checked and looked up
(:mod:`rankedlist.retrieval.milvus_collection` describes the fields)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rankedlist.retrieval.milvus_collection import (
    FORMAT,
    FORMAT_VERSION,
    ITEM_MAX_LENGTH,
    KEY,
    create_collection,
    new_lease,
    write_properties,
)
from rankedlist.retrieval.milvus_methods import milvus_index_params

__all__ = ["checked_items", "existing_items", "write_build", "write_rows"]

# Bytes of rows per insert call (a Milvus server takes messages of up to 64 MiB).
_CHUNK_BYTES = 8 * 2**20


def write_build(
    client: Any,
    staged: str,
    emb: np.ndarray,
    names: list[str],
    lab: np.ndarray | None,
    meta: dict[str, Any],
    params: dict[str, Any],
) -> None:
    """Create ``staged`` and write every row into it, then mark it complete (the one state a
    kill may leave that :func:`settle_collection` renames into place). A failure drops it."""
    props = {
        KEY["format"]: FORMAT,
        KEY["format_version"]: FORMAT_VERSION,
        KEY["num_items"]: "0",
        KEY["meta"]: json.dumps(meta),
        KEY["method"]: json.dumps(params),
        KEY["has_labels"]: "1" if lab is not None else "0",
        KEY["embedding_dim"]: str(emb.shape[1]),
        KEY["writer"]: json.dumps(new_lease("index build")),
        KEY["complete"]: "0",
    }
    create_collection(client, staged, emb.shape[1], milvus_index_params(params), props)
    try:
        write_rows(client, staged, emb, names, lab, meta.get("classes"), start=0)
        client.flush(staged)
        done = {KEY["num_items"]: str(len(emb)), KEY["complete"]: "1", KEY["writer"]: ""}
        write_properties(client, staged, done)
    except BaseException:
        try:
            client.drop_collection(staged)
        except Exception:  # noqa: BLE001 - the error being raised is the one to report
            pass
        raise


def checked_items(items: list[str]) -> list[str]:
    for item in items:
        if len(item.encode("utf-8")) > ITEM_MAX_LENGTH:
            raise ValueError(
                f"item name {item[:60]}... is longer than the {ITEM_MAX_LENGTH} bytes a Milvus "
                "collection stores per name: shorten the path"
            )
    if len(set(items)) != len(items):
        raise ValueError("item names repeat: each image is one row of a Milvus index")
    return items


def existing_items(client: Any, name: str, items: list[str], visible: int) -> set[str]:
    """Those of ``items`` that visible rows (``id < visible``) hold already."""
    known: set[str] = set()
    for s in range(0, len(items), 500):
        chunk = json.dumps(items[s : s + 500])
        hits = client.query(
            name, filter=f"id < {visible} and item in {chunk}", output_fields=["item"]
        )
        known.update(h["item"] for h in hits)
    return known


def write_rows(
    client: Any,
    name: str,
    emb: np.ndarray,
    items: list[str],
    labels: np.ndarray | None,
    classes: list[str] | None,
    start: int,
) -> None:
    """Upsert rows ``start, start + 1, ...`` in chunks of about :data:`_CHUNK_BYTES`."""
    per_chunk = max(1, _CHUNK_BYTES // (4 * emb.shape[1] + 512))
    for s in range(0, len(emb), per_chunk):
        rows = []
        for i in range(s, min(s + per_chunk, len(emb))):
            label = -1 if labels is None else int(labels[i])
            cls = classes[label] if classes and 0 <= label < len(classes) else ""
            rows.append(
                {"id": start + i, "embedding": emb[i].tolist(), "item": items[i],
                 "label": label, "class_name": str(cls)}
            )  # fmt: skip
        client.upsert(name, rows)
