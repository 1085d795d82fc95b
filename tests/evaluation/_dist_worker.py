"""One process of the 2-process evaluation test (launched with torchrun's environment).

Computes every case of ``cases()`` with ``distributed=True`` and saves the results as JSON in
the folder given as the first argument (``rank{R}.json``). The test computes the same cases in
one process and compares.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def _data(n, n_classes, dim, seed, near=0, dups=0, singletons=0, noise=1.0):
    """Clustered embeddings with near-duplicates (tiny perturbations) and exact duplicates."""
    rng = np.random.default_rng(seed)
    y = np.concatenate(
        [rng.integers(0, n_classes, n - singletons), n_classes + np.arange(singletons)]
    )
    x = rng.standard_normal((n_classes + singletons, dim))[y] + noise * rng.standard_normal(
        (n, dim)
    )
    if near:
        src, dst = rng.integers(0, n, near), rng.choice(n, near, replace=False)
        x[dst] = x[src] + 2e-3 * rng.standard_normal((near, dim))
    if dups:
        src, dst = rng.integers(0, n, dups), rng.choice(n, dups, replace=False)
        x[dst] = x[src]
    return x.astype(np.float32), y


def cases():
    """``name -> (function name, kwargs)``; the same on every process."""
    x, y = _data(700, 120, 24, seed=1, near=80, dups=40, singletons=5)
    xl, yl = _data(500, 6, 16, seed=2, near=40, dups=20, noise=2.0)  # long relevant lists
    xs, ys = _data(900, 150, 24, seed=3, near=60, dups=30)
    q, ql, g, gl = xs[:300], ys[:300], xs[300:], ys[300:]
    ql = ql.copy()
    ql[:4] = 10_000 + np.arange(4)  # queries without a relevant gallery item
    return {
        "same_auto": (
            "retrieval_metrics",
            dict(query=x, query_labels=y, ks=(1, 2, 10, 100), chunk_size=64),
        ),
        "same_default_chunks": ("retrieval_metrics", dict(query=x, query_labels=y, ks=(1, 4, 16))),
        "same_float32": (
            "retrieval_metrics",
            dict(query=xl, query_labels=yl, ks=(1, 8, 50), chunk_size=48, backend="screened"),
        ),
        "gallery_auto": (
            "retrieval_metrics",
            dict(
                query=q,
                query_labels=ql,
                gallery=g,
                gallery_labels=gl,
                ks=(1, 10, 20, 50),
                chunk_size=40,
            ),
        ),
        "same_faiss": (
            "retrieval_metrics",
            dict(query=x, query_labels=y, ks=(1, 10), backend="faiss"),
        ),
        "gallery_torch": (
            "retrieval_metrics",
            dict(
                query=q,
                query_labels=ql,
                gallery=g,
                gallery_labels=gl,
                ks=(1, 5),
                backend="torch",
                chunk_size=33,
            ),
        ),
        "same_torch_auto_chunks": (  # the automatic chunk, capped so both processes work
            "retrieval_metrics",
            dict(query=x, query_labels=y, ks=(1, 4), backend="torch"),
        ),
        "inshop": (
            "evaluate_embeddings",
            dict(
                query=q,
                query_labels=ql,
                gallery=g,
                gallery_labels=gl,
                protocol="inshop",
                with_nmi=False,
            ),
        ),
        "glyphs_nmi": ("evaluate_embeddings", dict(query=xl, query_labels=yl, protocol="glyphs")),
    }


def main() -> None:
    import torch
    import torch.distributed as dist

    import rankedlist.evaluation as ev

    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {}
    try:
        for name, (fn, kwargs) in cases().items():
            results[name] = getattr(ev, fn)(**kwargs, distributed=True)
    finally:
        dist.destroy_process_group()
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
