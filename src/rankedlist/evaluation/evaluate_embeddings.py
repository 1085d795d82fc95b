"""One call that evaluates embeddings under a benchmark protocol and returns a flat dict."""

from __future__ import annotations

from typing import Any

from rankedlist.evaluation._comm import Comm
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
    distributed: bool = False,
) -> dict[str, float | int]:
    """Retrieval metrics (and NMI) of a benchmark protocol, as one flat dict for logging.

    Keys: ``recall@K`` for the protocol's K, ``r_precision``, ``map@r``, ``nmi`` (when
    ``with_nmi``), ``lone_queries``, ``num_queries`` and ``num_gallery`` (retrievable items per
    query). NMI clusters the query embeddings (the test set) with k = their number of classes.

    A protocol with a separate gallery (``"inshop"``) requires ``gallery``; the others search
    the query set against itself when ``gallery`` is None. See ``retrieval_metrics`` for the
    accepted inputs and errors.

    ``distributed=True``: every process of the initialised default process group calls this
    with the same (whole, gathered) embeddings; the retrieval metrics are split across the
    processes (``retrieval_metrics(distributed=True)``), NMI is computed by rank 0 and sent to
    the others, and every process returns the same dict.
    """
    proto = get_protocol(protocol)
    if proto.separate_gallery and gallery is None:
        raise ValueError(
            f"protocol {proto.name!r} searches queries against a separate gallery: "
            "pass gallery and gallery_labels"
        )
    out: dict[str, float | int] = dict(
        retrieval_metrics(
            query,
            query_labels,
            gallery,
            gallery_labels,
            proto.ks,
            chunk_size,
            distributed=distributed,
        )
    )
    if with_nmi:
        comm = Comm() if distributed else None
        if comm is None or comm.world == 1:
            out["nmi"] = nmi(query, query_labels, seed=seed)
        else:
            value = nmi(query, query_labels, seed=seed) if comm.rank == 0 else None
            out["nmi"] = comm.broadcast_object(value)
    lone = out.pop("lone_queries")
    out["lone_queries"] = lone
    out["num_queries"] = int(query.shape[0])
    same = gallery is None or gallery is query
    out["num_gallery"] = int(query.shape[0]) - 1 if same else int(gallery.shape[0])
    return out
