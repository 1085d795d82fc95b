"""Retrieval: the end of the pipeline, images -> trained embedding model -> a searchable index.

* :class:`EmbeddingIndex`: named, L2-normalised embeddings with exact cosine search
  (``rankedlist.evaluation.nearest_neighbors``), atomic ``save`` / ``load`` of an index folder.
* :func:`embed_images` / :func:`list_images`: image files or a dataset -> embeddings.
* :func:`load_model_from_checkpoint`, :func:`build_index_from_checkpoint`,
  :func:`search_images`: from a training run's checkpoint to an index and its answers.
* :func:`save_search_picture`: the answers as a PNG grid.
* :mod:`rankedlist.retrieval.cli_commands`: ``rankedlist index build`` / ``index search``.

Retrieval consumes every other subpackage; only the command line imports it.
"""

from rankedlist.retrieval.embed_images import embed_images, list_images, resolve_device
from rankedlist.retrieval.embedding_index import EmbeddingIndex, Match
from rankedlist.retrieval.from_checkpoint import (
    CheckpointModel,
    build_index_from_checkpoint,
    load_model_from_checkpoint,
    resolve_checkpoint,
    search_images,
)
from rankedlist.retrieval.search_picture import save_search_picture

__all__ = [
    "CheckpointModel",
    "EmbeddingIndex",
    "Match",
    "build_index_from_checkpoint",
    "embed_images",
    "list_images",
    "load_model_from_checkpoint",
    "resolve_checkpoint",
    "resolve_device",
    "save_search_picture",
    "search_images",
]
