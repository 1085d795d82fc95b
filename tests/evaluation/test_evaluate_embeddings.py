"""evaluate_embeddings: the flat dict of a protocol equals its parts."""

from __future__ import annotations

import numpy as np
import pytest

from rankedlist.evaluation import PROTOCOLS, Protocol, evaluate_embeddings, nmi, retrieval_metrics


def data(n=300, classes=30, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = rng.standard_normal((classes, dim))[y] + 0.8 * rng.standard_normal((n, dim))
    return x.astype(np.float32), y


def test_presets_are_the_benchmark_protocols():
    assert PROTOCOLS["cub200"].ks == PROTOCOLS["cars196"].ks == (1, 2, 4, 8)
    assert PROTOCOLS["sop"].ks == (1, 10, 100, 1000)
    assert PROTOCOLS["inshop"].ks == (1, 10, 20, 30, 40, 50)
    assert PROTOCOLS["inshop"].separate_gallery
    assert PROTOCOLS["glyphs"].ks == PROTOCOLS["default"].ks == (1, 2, 4, 8)


def test_flat_dict_keys_and_values():
    x, y = data()
    out = evaluate_embeddings(x, y, protocol="cub200")
    assert list(out) == [
        "recall@1",
        "recall@2",
        "recall@4",
        "recall@8",
        "r_precision",
        "map@r",
        "nmi",
        "lone_queries",
        "num_queries",
        "num_gallery",
    ]
    parts = retrieval_metrics(x, y, ks=(1, 2, 4, 8))
    for key, value in parts.items():
        assert out[key] == value
    assert out["nmi"] == nmi(x, y)
    assert out["num_queries"] == 300 and out["num_gallery"] == 299
    assert all(isinstance(v, float | int) for v in out.values())


def test_separate_gallery_protocol():
    x, y = data(n=400)
    q, ql, g, gl = x[:150], y[:150], x[150:], y[150:]
    out = evaluate_embeddings(q, ql, g, gl, protocol="inshop", with_nmi=False)
    assert "nmi" not in out and out["num_gallery"] == 250
    assert out["recall@50"] == retrieval_metrics(q, ql, g, gl, ks=(50,))["recall@50"]
    with pytest.raises(ValueError, match="separate gallery"):
        evaluate_embeddings(q, ql, protocol="inshop")


def test_custom_protocol_and_unknown_name():
    x, y = data()
    out = evaluate_embeddings(x, y, protocol=Protocol("mine", (3,)), with_nmi=False)
    assert "recall@3" in out and "recall@1" not in out
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        evaluate_embeddings(x, y, protocol="imagenet")
    with pytest.raises(ValueError, match="Recall@1000"):
        evaluate_embeddings(x, y, protocol="sop")  # K larger than the gallery
