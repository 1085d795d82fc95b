"""Build time, memory, queries/s and recall@10 of the index methods (exact, ivf, hnsw).

Datasets of unit-norm float32 vectors in hierarchical clusters, like trained embeddings
(categories, then classes): groups of about 1,000 items (centres N(0, I)), classes of about 5
items (SOP's average) whose centres scatter around their group's (+ N(0, I)), items around their
class's (+ 0.7 N(0, I)). Each has 1,000 held-out queries from the same distribution (not in
the index):

* ``clustered-128`` and ``clustered-512``: 500,000 vectors of 128 and 512 dimensions;
* ``sop-512``: the SOP test set's size, 60,502 vectors of 512 dimensions;
* ``clustered-128-200k``: 200,000 vectors of 128 dimensions (not run by default: a smaller set
  for comparing hnsw's construction settings).

Data without such structure is much harder for any approximate index: with ``eval_speed.py``'s
SOP generator (class centres plus isotropic noise of 2.2 N(0, I), so that beyond its 2-12
classmates a query's top 10 are points at random) recall@10 stays below 0.4 at every setting
here.

For each dataset every method of ``--methods`` (exact always: it is the reference) is built
once through rankedlist (``EmbeddingIndex(..., method=...)``, the parameters chosen from N as
``rankedlist index build`` chooses them, except where a row says otherwise) and searched with
two or three settings; hnsw is built once per ``--M`` and ``--ef-construction`` value (efC in
the rows) and searched with each ``--ef``. A row says "(default)" when all its settings are
rankedlist's defaults. Columns: build seconds
(the faiss training and adding; exact has nothing to build), the index's memory (the
``index.faiss`` file faiss writes, or the N x D float32 matrix for exact), queries per second
(1,000 queries in one ``EmbeddingIndex.search`` call, k = 10, the fastest of ``--repeat``
runs), the speed-up over the exact search of the same run, and recall@10: the share of the
exact top 10 that the method returns. Everything runs in this one process on ``--threads``
cores (2 by default, like the machine the README's table comes from).

``--backends faiss milvus`` measures each method a second time as a Milvus collection
(``MilvusIndex.create`` into a Milvus Lite database in a temporary folder, embedded in this
process: rankedlist's Milvus backend with the same parameters, FLAT / IVF_FLAT / HNSW by inner
product). Its build seconds are the whole write (rows sent through pymilvus, segments sealed,
their indexes built); its memory is the size of the collection's data folder (the vectors and
the per-segment indexes, what a server holds loaded); its queries/s come from one
``MilvusIndex.search`` of the 1,000 queries, and recall and speed-up are against the same faiss
exact search.

    python benchmarks/index_speed.py                     # all methods on the 3 default sets
    python benchmarks/index_speed.py --datasets sop-512  # one dataset
    python benchmarks/index_speed.py --datasets clustered-128-200k --methods hnsw \\
        --ef-construction 40 100 200 --ef 64 128 256     # hnsw's construction and search
    python benchmarks/index_speed.py --json results.json
    python benchmarks/index_speed.py --datasets sop-512 --backends faiss milvus
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

QUERIES = 1000
K = 10
DATASETS = {
    # name: (items, dimension)
    "clustered-128": (500_000, 128),
    "clustered-512": (500_000, 512),
    "sop-512": (60_502, 512),  # the SOP test set's size
    "clustered-128-200k": (200_000, 128),  # hnsw's construction settings, affordable on 2 cores
}
DEFAULT_DATASETS = ["clustered-128", "clustered-512", "sop-512"]
# Search settings of each method (None: the default). hnsw's come from --ef, and hnsw is built
# once per --M and --ef-construction value (None: the default).
SEARCHES = {
    "exact": [{}],
    "ivf": [{"nprobe": 4}, {"nprobe": None}, {"nprobe": 32}],
    "hnsw": [{"ef": 32}, {"ef": None}, {"ef": 128}],
}


def settings(
    methods: list[str], m_values: list, efc_values: list, ef_values: list | None
) -> list[tuple[str, dict, list[dict]]]:
    """(method, build parameters, search settings) in the order they are measured; exact first,
    the reference of recall and speed-up."""
    out = [("exact", {}, SEARCHES["exact"])]
    if "ivf" in methods:
        out.append(("ivf", {}, SEARCHES["ivf"]))
    if "hnsw" in methods:
        searches = SEARCHES["hnsw"] if ef_values is None else [{"ef": v} for v in ef_values]
        for m in m_values:
            for efc in efc_values:
                build = {k: v for k, v in (("M", m), ("ef_construction", efc)) if v is not None}
                out.append(("hnsw", build, searches))
    return out


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors in hierarchical clusters (see the module docstring), in blocks."""
    rng = np.random.default_rng(seed)
    groups = max(1, n // 1000)
    classes = max(1, n // 5)
    group_centres = rng.standard_normal((groups, dim), dtype=np.float32)
    class_centres = group_centres[rng.integers(0, groups, classes)]
    class_centres += rng.standard_normal((classes, dim), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 8192):
        block = class_centres[labels[s : s + 8192]]
        block += 0.7 * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s : s + 8192] = block
    return x


def make_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(indexed vectors, held-out queries)."""
    n, dim = DATASETS[name]
    x = clustered(n + QUERIES, dim)
    held_out = np.zeros(len(x), dtype=bool)
    held_out[np.random.default_rng(1).choice(len(x), QUERIES, replace=False)] = True
    queries = np.ascontiguousarray(x[held_out])
    return np.ascontiguousarray(x[~held_out]), queries


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_milvus(x: np.ndarray, method: str, build: dict, tmp: Path):
    """The method as a Milvus Lite collection: (index, build seconds, bytes of its data)."""
    from rankedlist.retrieval.milvus_index import MilvusIndex

    uri = tmp / f"milvus-{method}-{len(list(tmp.iterdir()))}.db"
    t0 = time.perf_counter()
    index = MilvusIndex.create(str(uri), method, x, [str(i) for i in range(len(x))],
                               method=method, **build)  # fmt: skip
    return index, time.perf_counter() - t0, folder_bytes(uri)


def index_bytes(index, tmp: Path) -> int:
    """Bytes of the search structure: index.faiss as faiss writes it, or the exact matrix."""
    if index.method == "exact":
        return index.embeddings.nbytes
    path = tmp / "index.faiss"
    index._method.write(path)
    size = path.stat().st_size
    path.unlink()
    return size


def timed_search(index, queries: np.ndarray, repeat: int, **setting) -> tuple[float, np.ndarray]:
    best, rows = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        _, rows = index.search(queries, K, **setting)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best, rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def run_dataset(
    name: str, repeat: int, plan: list[tuple[str, dict, list[dict]]], backends: list[str]
) -> list[dict]:
    from rankedlist.retrieval import EmbeddingIndex

    t0 = time.perf_counter()
    x, queries = make_dataset(name)
    print(f"\n{name}: {x.shape[0]:,} x {x.shape[1]} (+{len(queries)} queries), generated in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    items = [""] * len(x)  # names are not what is measured
    rows_out: list[dict] = []
    reference: dict = {}  # the faiss exact search: its rows (recall) and queries/s (speed-up)
    with tempfile.TemporaryDirectory() as tmp:
        for method, build, searches in plan:
            for backend in ["faiss", *[b for b in backends if b != "faiss"]]:
                if backend == "faiss":
                    t0 = time.perf_counter()
                    index = EmbeddingIndex(x, items, method=method, **build)
                    build_s = time.perf_counter() - t0 if method != "exact" else 0.0
                    memory = index_bytes(index, Path(tmp))
                else:
                    index, build_s, memory = build_milvus(x, method, build, Path(tmp))
                for setting in searches:
                    row = measure(index, queries, repeat, setting, method, reference)
                    row.update(dataset=name, backend=backend, build_s=round(build_s, 1),
                               memory_mib=round(memory / 2**20, 1))  # fmt: skip
                    if backend in backends:
                        rows_out.append(row)
                        print(_line(row), flush=True)
                if backend == "milvus":
                    index.close()
                del index
    return rows_out


def measure(index, queries, repeat: int, setting: dict, method: str, reference: dict) -> dict:
    """One search setting of one index: its label, queries/s, speed-up and recall@10."""
    from rankedlist.retrieval import index_methods as im

    given = {k: v for k, v in setting.items() if v is not None}
    qps, found = timed_search(index, queries, repeat, **given)
    if method == "exact" and "truth" not in reference:
        reference.update(truth=found, qps=qps)
    used = index.search_setting(**given)
    label = ", ".join(f"{k} {v}" for k, v in used.items())
    if method == "ivf":
        label = f"nlist {index.method_params['nlist']}, {label}"
    default = not setting or None in setting.values()
    if method == "hnsw":
        p = index.method_params
        label = f"M {p['M']}, efC {p['ef_construction']}, {label}"
        default = (p["M"], p["ef_construction"], used["ef"]) == (
            im.HNSW_M,
            im.HNSW_EF_CONSTRUCTION,
            im.HNSW_EF_SEARCH,
        )
    return {
        "method": method,
        "setting": label + (" (default)" if default and method != "exact" else ""),
        "queries_per_s": round(qps, 1),
        "speedup": round(qps / reference["qps"], 1),
        "recall@10": round(recall_at_k(found, reference["truth"]), 4),
    }


def _line(row: dict) -> str:
    return (
        f"| {row['dataset']} | {row['backend']} | {row['method']} | {row['setting']} | "
        f"{row['build_s']:.1f} | "
        f"{row['memory_mib']:.0f} | {row['queries_per_s']:,.0f} | {row['speedup']:.1f}x | "
        f"{row['recall@10']:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=DEFAULT_DATASETS)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=["exact", "ivf", "hnsw"],
        default=["exact", "ivf", "hnsw"],
        help="methods to measure (exact always runs: it is the reference)",
    )
    parser.add_argument(
        "--M", type=int, nargs="+", default=[None], help="hnsw: links per node (one build each)"
    )
    parser.add_argument(
        "--ef-construction",
        type=int,
        nargs="+",
        default=[None],
        help="hnsw: candidates explored while inserting a node (one build each)",
    )
    parser.add_argument(
        "--ef", type=int, nargs="+", help="hnsw: search settings (default: 32, the default, 128)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["faiss", "milvus"],
        default=["faiss"],
        help="faiss (index folders; the default) and/or milvus (Milvus Lite collections)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="search runs, fastest kept")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    plan = settings(args.methods, args.M, args.ef_construction, args.ef)
    rows = []
    start = time.perf_counter()
    with threadpool_limits(args.threads):
        print("| dataset | backend | method | setting | build s | memory MiB | queries/s | "
              "vs exact | recall@10 |\n|---|---|---|---|---:|---:|---:|---:|---:|")  # fmt: skip
        for name in args.datasets:
            rows.extend(run_dataset(name, args.repeat, plan, args.backends))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if "milvus" in args.backends:
        from importlib.metadata import version

        print(f"pymilvus {version('pymilvus')}, milvus-lite {version('milvus-lite')}")
    print(f"\n{args.threads} threads, faiss {faiss.__version__}, total "
          f"{time.perf_counter() - start:.0f} s, peak memory {peak:.1f} GiB")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
