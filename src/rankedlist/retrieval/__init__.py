"""Retrieval: the end of the pipeline, images -> trained embedding model -> a searchable index.

* :class:`EmbeddingIndex`: named, L2-normalised embeddings searched exactly (cosine,
  ``rankedlist.evaluation.nearest_neighbors``) or approximately (faiss ``ivf`` / ``hnsw``,
  :mod:`~rankedlist.retrieval.index_methods`), atomic ``save`` / ``load`` of an index folder
  (:mod:`~rankedlist.retrieval.index_files`: the files and their checksums;
  :mod:`~rankedlist.retrieval.index_swap`: the swap, its one-writer lock and the recovery after
  a kill), ``add`` without rebuilding.
* :func:`embed_images` / :func:`list_images`: image files or a dataset -> embeddings.
* :func:`open_index_model`: a training run's model with its test transform (rebuilt by
  ``rankedlist.training.checkpoint_model.load_model_from_checkpoint``), or an exported ONNX
  model run by onnxruntime.
* :func:`build_index`, :func:`build_index_from_checkpoint`, :func:`add_images`,
  :func:`search_images`: folders of images to an index, more images into it, and its answers.
* :func:`approximate_retrieval_metrics`: Recall@K / R-Precision / MAP@R through an index, to see
  what an approximate method costs on real embeddings.
* :func:`save_search_picture`: the answers as a PNG grid.
* :mod:`~rankedlist.retrieval.index_actions`: the work of ``rankedlist index build`` / ``add`` /
  ``search`` (the command line itself is :mod:`rankedlist.cli.index`).

Retrieval consumes every other subpackage; only the command line imports it.
"""

from rankedlist.retrieval.approximate_evaluation import approximate_retrieval_metrics
from rankedlist.retrieval.embed_images import embed_images, list_images
from rankedlist.retrieval.embedding_index import EmbeddingIndex, Match
from rankedlist.retrieval.images_to_index import (
    add_images,
    build_index,
    build_index_from_checkpoint,
    search_images,
)
from rankedlist.retrieval.index_models import IndexModel, open_index_model
from rankedlist.retrieval.search_picture import save_search_picture

__all__ = [
    "EmbeddingIndex",
    "IndexModel",
    "Match",
    "add_images",
    "approximate_retrieval_metrics",
    "build_index",
    "build_index_from_checkpoint",
    "embed_images",
    "list_images",
    "open_index_model",
    "save_search_picture",
    "search_images",
]
