"""How far NMI moves when k-means is seeded by k-means++ and run to convergence, and its cost.

Clustered random embeddings of a test-set shape from ``eval_speed.py`` (default SOP: 60,502
items, 11,316 classes of 2-12 images, about 5.3 each, D = 512, noise 2.2, which puts NMI near
0.87-0.9), then, in one run on the same data:

* ``old``: the previous ``nmi`` faiss path, reproduced here: ``faiss.Kmeans`` from one seeded
  random initialisation, ``min(50, 3e12 / (2 N k D))`` Lloyd iterations (4 on SOP, 50 on CUB);
* ``new``: ``rankedlist.evaluation.nmi``'s faiss path as it is now (greedy k-means++ seeding,
  then Lloyd until the relative objective improvement is at most ``tol`` or ``max_iter``
  iterations have run);
* ``tol=X`` (``--tols``): the new path with another tolerance, from the same seeding;
* ``L=N`` (``--candidates``): the new path with N k-means++ candidates per seed instead of
  ``2 + ln k`` (N = 1 is plain k-means++, one N x k x D product instead of 2 + ln k);
* ``sklearn`` (``--with-sklearn``, for the small shapes): ``method="sklearn"``.

It prints NMI, the k-means objective (squared distances to the cluster means), the Lloyd
iterations, the wall-clock and CPU seconds of each, the relative objective improvement of every
new iteration, and each row against ``old`` (the machine may be shared, so absolute seconds mean
little; the ratios are measured in the same run, and CPU time is less sensitive to other
processes than wall time).

    python benchmarks/nmi_convergence.py                  # SOP size (about 4-5 min on 2 cores)
    python benchmarks/nmi_convergence.py --candidates 1 3  # also cheaper seedings
    python benchmarks/nmi_convergence.py --dataset cub200 --tols 1e-4 1e-5 --with-sklearn
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import DATASETS, make_data  # noqa: E402  (the speed benchmark's data)

OLD_FLOP_BUDGET, OLD_MAX_ITER = 3e12, 50


def old_kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, int]:
    """The previous faiss path: one seeded random initialisation, a shape-bound iteration count."""
    import faiss

    n, d = x.shape
    niter = int(min(OLD_MAX_ITER, max(2, OLD_FLOP_BUDGET // (2.0 * n * k * d))))
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        nredo=1,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, n),
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64), niter


def objective(x: np.ndarray, assign: np.ndarray, k: int) -> float:
    """Sum of squared distances of the points to their cluster means (float64)."""
    counts = np.bincount(assign, minlength=k).astype(np.float64)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, assign, x.astype(np.float64))
    means = sums / np.maximum(counts, 1)[:, None]
    return float(((x - means[assign]) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="sop", choices=list(DATASETS))
    parser.add_argument("--noise", type=float, default=None, help="noise / centre scale")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    parser.add_argument("--tols", type=float, nargs="*", default=[], help="other tolerances")
    parser.add_argument(
        "--candidates", type=int, nargs="*", default=[], help="other k-means++ candidate counts"
    )
    parser.add_argument("--with-sklearn", action="store_true", help="also method='sklearn'")
    args = parser.parse_args()

    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    import rankedlist.evaluation

    nmi_mod = sys.modules["rankedlist.evaluation.nmi"]  # the package's `nmi` is the function
    x, labels = make_data(args.dataset, args.noise)
    k = int(labels.max()) + 1
    print(
        f"{args.dataset}: {x.shape[0]} x {x.shape[1]}, {k} classes, noise "
        f"{args.noise or DATASETS[args.dataset][5]}; faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads; new defaults: max_iter="
        f"{nmi_mod.FAISS_MAX_ITER}, tol={nmi_mod.FAISS_TOL:g}",
        flush=True,
    )

    def row(name: str, assign: np.ndarray, iters: int, t0: tuple[float, float], seed_sec: float):
        sec, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
        v = float(normalized_mutual_info_score(labels, assign, average_method="arithmetic"))
        rows[name] = (v, objective(x, assign, k), iters, sec, cpu, seed_sec)
        print(f"{name} done in {sec:.1f} s ({cpu:.1f} CPU s)", flush=True)

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    rows: dict[str, tuple[float, float, int, float, float, float]] = {}
    t0 = now()
    assign, niter = old_kmeans(x, k, args.seed)
    row("old", assign, niter, t0, 0.0)

    seeding = nmi_mod._kmeans_plus_plus
    seed_runs: list[tuple[np.ndarray, float]] = []

    def timed_seeding(*a, **kw):  # the library's own seeding, timed and kept for --tols
        t = time.perf_counter()
        out = seeding(*a, **kw)
        seed_runs.append((out, time.perf_counter() - t))
        return out

    nmi_mod._kmeans_plus_plus = timed_seeding
    t0 = now()
    assign, objs = nmi_mod._kmeans(x, k, args.seed, "faiss", None, None)  # nmi()'s defaults
    seeds, seed_sec = seed_runs[-1]
    row("new", assign, len(objs), t0, seed_sec)
    rel = [f"{(a - b) / b:.1e}" for a, b in zip(objs, objs[1:], strict=False)]
    print(f"new: relative objective improvement per iteration: {' '.join(rel)}", flush=True)
    for tol in args.tols:
        t0 = now()
        t0 = (t0[0] - seed_sec, t0[1])  # the same seeding (its CPU time is left out)
        assign, objs = nmi_mod._lloyd(x, x[seeds], nmi_mod.FAISS_MAX_ITER, tol)
        row(f"tol={tol:g}", assign, len(objs), t0, seed_sec)
    for cand in args.candidates:
        t0 = now()
        seeds_l = seeding(x, k, np.random.default_rng(args.seed), n_candidates=cand)
        t_l = time.perf_counter() - t0[0]
        assign, objs = nmi_mod._lloyd(x, x[seeds_l], nmi_mod.FAISS_MAX_ITER, nmi_mod.FAISS_TOL)
        row(f"L={cand}", assign, len(objs), t0, t_l)
    if args.with_sklearn:
        t0 = now()
        assign = rankedlist.evaluation.cluster_assignments(x, k, args.seed, "sklearn")
        row("sklearn", assign, -1, t0, 0.0)

    print(
        f"\n{'':11} {'NMI':>7} {'objective':>11} {'iters':>5} {'seconds':>8} {'CPU s':>8} "
        f"{'(seeding s)':>11}"
    )
    for name, (v, obj, it, sec, cpu, seed_sec) in rows.items():
        iters = str(it) if it >= 0 else "-"
        print(f"{name:11} {v:7.4f} {obj:11.2f} {iters:>5} {sec:8.1f} {cpu:8.1f} {seed_sec:11.1f}")
    old = rows["old"]
    for name, (v, obj, _, sec, cpu, _) in rows.items():
        if name != "old":
            print(
                f"{name} vs old: NMI {v - old[0]:+.4f}, objective x{obj / old[1]:.4f}, "
                f"time x{sec / old[3]:.2f} (CPU time x{cpu / old[4]:.2f})"
            )


if __name__ == "__main__":
    main()
