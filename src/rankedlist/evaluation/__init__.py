"""Exact, chunked retrieval and clustering metrics (definitions: the README's Evaluation section).

* :func:`retrieval_metrics`: Recall@K, R-Precision, MAP@R by cosine similarity.
* :func:`nmi`: NMI of a seeded k-means clustering.
* :func:`evaluate_embeddings`: both, under a named protocol (:data:`PROTOCOLS`).
* :func:`nearest_neighbors`: exact k-NN lists (faiss or torch).
"""

from rankedlist.evaluation.evaluate_embeddings import evaluate_embeddings
from rankedlist.evaluation.nearest_neighbors import nearest_neighbors
from rankedlist.evaluation.nmi import cluster_assignments, nmi
from rankedlist.evaluation.protocols import PROTOCOLS, Protocol, get_protocol
from rankedlist.evaluation.retrieval_metrics import retrieval_metrics

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "cluster_assignments",
    "evaluate_embeddings",
    "get_protocol",
    "nearest_neighbors",
    "nmi",
    "retrieval_metrics",
]
