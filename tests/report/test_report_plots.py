"""The pictures: rendered border colours, tiny inputs, missing keys, subsampling limits."""

from __future__ import annotations

import numpy as np
import pytest
from _report_helpers import FakeImageDataset, clustered_embeddings, make_history
from PIL import Image

from rankedlist.report.embedding_map import embed_2d, plot_embedding_map, subsample_for_map
from rankedlist.report.recall_at_k_plot import plot_recall_at_k
from rankedlist.report.retrieval_grid import (
    QUERY_COLOR,
    RIGHT_COLOR,
    WRONG_COLOR,
    plot_retrieval_grid,
    retrieval_grid_figure,
)
from rankedlist.report.training_curves import plot_training_curves


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


@pytest.mark.parametrize("query_count", [None, 14])
def test_grid_borders_are_green_exactly_where_brute_force_says_same_class(tmp_path, query_count):
    x, labels = clustered_embeddings(5, 6, dim=8, noise=1.1, seed=2)
    perm = np.random.default_rng(1).permutation(len(x))
    x, labels = x[perm], labels[perm]
    dataset = FakeImageDataset(labels)
    args = dict(n_queries=6, k=4, query_count=query_count, seed=0)
    path = plot_retrieval_grid(x, labels, dataset, tmp_path / "grid.png", **args)
    _, info = retrieval_grid_figure(x, labels, FakeImageDataset(labels), **args)  # same seed
    with Image.open(path) as img:
        png = np.asarray(img.convert("RGB")).astype(int)

    def frame_pixel(box):
        """A pixel in the middle of the left side of a cell's coloured frame."""
        x0, y0, _, y1 = box
        return png[(y0 + y1) // 2, x0 + 2]

    green, red, blue = _rgb(RIGHT_COLOR), _rgb(WRONG_COLOR), _rgb(QUERY_COLOR)
    n_green = n_red = 0
    for i, q in enumerate(info["query_rows"]):
        # Brute force: sort the gallery by dot product, drop the query itself by index.
        gallery = np.arange(len(x)) if query_count is None else np.arange(query_count, len(x))
        gallery = gallery[gallery != q]
        top = gallery[np.argsort(-(x[gallery] @ x[q]), kind="stable")[:4]]
        np.testing.assert_array_equal(info["neighbor_rows"][i], top)
        boxes = info["boxes"][i]
        assert np.abs(frame_pixel(boxes[0]) - blue).max() <= 3
        for j, r in enumerate(top):
            same = labels[r] == labels[q]
            expected = green if same else red
            pixel = frame_pixel(boxes[j + 1])
            assert np.abs(pixel - expected).max() <= 3, (i, j, pixel, expected)
            n_green += same
            n_red += not same
    assert n_green and n_red  # both colours were checked
    if query_count is not None:
        assert (info["query_rows"] < query_count).all()
    # Each image shown was loaded by its row: the queries and their neighbours.
    assert set(dataset.loaded) == set(info["query_rows"]) | set(info["neighbor_rows"].ravel())


def test_subsample_limits_classes_and_points():
    labels = np.repeat(np.arange(50), 40)
    rows = subsample_for_map(labels, max_points=300, max_classes=20, seed=0)
    assert len(rows) <= 300
    assert len(np.unique(labels[rows])) == 20
    assert len(np.unique(rows)) == len(rows)
    np.testing.assert_array_equal(rows, subsample_for_map(labels, 300, 20, seed=0))
    # Singleton classes are avoided while classes with >= 2 images exist.
    labels = np.array([0, 1, 2, 3, 3, 4, 4])
    assert set(labels[subsample_for_map(labels, max_classes=5)]) == {3, 4}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 12])
def test_embed_2d_handles_tiny_inputs(n):
    x, _ = clustered_embeddings(2, 6, dim=6)
    coords = embed_2d(x[:n])
    assert coords.shape == (n, 2) and np.isfinite(coords).all()


def test_embed_2d_is_seeded():
    x, _ = clustered_embeddings(4, 5, dim=6)
    np.testing.assert_allclose(embed_2d(x, seed=0), embed_2d(x, seed=0))


def test_embedding_map_tiny_and_degenerate(tmp_path):
    x, labels = clustered_embeddings(2, 3, dim=4)
    path = plot_embedding_map(x, labels, tmp_path / "map.png", class_names=["a", "b"])
    with Image.open(path) as img:
        assert img.width > 300 and img.height > 200
    one_class = plot_embedding_map(x[:3], labels[:3], tmp_path / "one.png")
    assert one_class is not None and one_class.stat().st_size > 0
    assert plot_embedding_map(x[:1], labels[:1], tmp_path / "none.png") is None


def test_training_curves_with_missing_keys(tmp_path):
    assert plot_training_curves([], tmp_path / "empty.png") is None
    assert plot_training_curves([{"step": 1, "epoch": 0}], tmp_path / "nothing.png") is None
    assert not (tmp_path / "nothing.png").exists()
    only_loss = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(5)]
    only_loss.append({"step": 5, "loss": float("nan")})  # skipped, not plotted as a gap error
    path = plot_training_curves(only_loss, tmp_path / "loss.png")
    with Image.open(path) as img:
        assert img.width > 200
    path = plot_training_curves(make_history(60), tmp_path / "full.png")
    with Image.open(path) as img:
        assert img.width > 1000 and img.height > 500  # a 2 x 3 grid of panels


def test_recall_plot_needs_recall(tmp_path):
    assert plot_recall_at_k({"fused": {"map@r": 0.5}}, [], tmp_path / "r.png") is None
    metrics = {"fused": {"recall@1": 0.5, "recall@10": 0.8}, "high": {"recall@1": 0.4}}
    path = plot_recall_at_k(metrics, [1, 10, 100], tmp_path / "r.png")
    with Image.open(path) as img:
        img.verify()
