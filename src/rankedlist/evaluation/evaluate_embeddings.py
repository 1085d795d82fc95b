"""One call that evaluates embeddings under a benchmark protocol and returns a flat dict."""

from __future__ import annotations

from typing import Any

from rankedlist.evaluation._inputs import ArrayLike
from rankedlist.evaluation.nmi import nmi
from rankedlist.evaluation.protocols import Protocol, get_protocol
from rankedlist.evaluation.retrieval_metrics import retrieval_metrics


def evaluate_embeddings(
    query: ArrayLike,
    query_labels: Any,
    gallery: ArrayLike | None = None,
    gallery_labels: Any = None,
    protocol: str | Protocol = "cub200",
    with_nmi: bool = True,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, float | int]:
    """Retrieval metrics (and NMI) of a benchmark protocol, as one flat dict for logging.

    Keys: ``recall@K`` for the protocol's K, ``r_precision``, ``map@r``, ``nmi`` (when
    ``with_nmi``), ``lone_queries``, ``num_queries`` and ``num_gallery`` (retrievable items per
    query). NMI clusters the query embeddings (the test set) with k = their number of classes.

    A protocol with a separate gallery (``"inshop"``) requires ``gallery``; the others search
    the query set against itself when ``gallery`` is None. See ``retrieval_metrics`` for the
    accepted inputs and errors.
    """
    proto = get_protocol(protocol)
    if proto.separate_gallery and gallery is None:
        raise ValueError(
            f"protocol {proto.name!r} searches queries against a separate gallery: "
            "pass gallery and gallery_labels"
        )
    out: dict[str, float | int] = dict(
        retrieval_metrics(query, query_labels, gallery, gallery_labels, proto.ks, chunk_size)
    )
    if with_nmi:
        out["nmi"] = nmi(query, query_labels, seed=seed)
    lone = out.pop("lone_queries")
    out["lone_queries"] = lone
    out["num_queries"] = int(query.shape[0])
    same = gallery is None or gallery is query
    out["num_gallery"] = int(query.shape[0]) - 1 if same else int(gallery.shape[0])
    return out
