"""Speed and memory of rankedlist's evaluation against PML, bare faiss and the matmul floor.

Clustered random embeddings of the CUB (5,924 / 100 classes), Cars (8,131 / 98) and SOP
(60,502 / 11,316 classes of 2-12 images) test-set sizes, D = 512. For each dataset, side by
side in one run:

* ``floor``: the full float32 similarity product in chunks (numpy's BLAS, nothing selected);
* ``ours``:  ``retrieval_metrics`` (default back end) with the dataset's Recall@K (R@1000 on
  SOP), R-Precision, MAP@R; where its time goes (``profile=``) is printed below the table;
* ``faissbe``: the same metrics with ``backend="faiss"`` (the CPU default before screening);
* ``screened``: the same metrics with ``backend="screened"`` forced (CUB and Cars only; on SOP
  it is what ``ours`` runs);
* ``pml``:   PML's AccuracyCalculator, precision_at_1 + r_precision + MAP@R, k="max_bin_count";
* ``faiss``: a bare IndexFlatIP search with k = the largest class size;
* ``nmi``:   ``rankedlist.evaluation.nmi``.

The CPU may be shared: ``--repeat N`` measures floor, ours, faissbe, screened and faiss N
times, interleaved, and keeps the fastest of each; the ratios compare numbers of one run.
Each measurement runs in its own subprocess, so peak memory beyond the inputs is the growth
of ``ru_maxrss`` (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) over what the inputs took.

``--distributed``: the metric time of ``retrieval_metrics(distributed=True)`` in 2 gloo
processes of 1 thread each against 1 process of 1 thread (``--world`` to change 2), the same
embeddings, interleaved ``--repeat`` times. The wall-clock speed-up needs 2 idle cores; the CPU
seconds of the busiest process show how the work is split whatever else the machine runs.

    python benchmarks/eval_speed.py                       # all datasets, CPU
    python benchmarks/eval_speed.py --datasets sop --skip-nmi --repeat 2
    python benchmarks/eval_speed.py --datasets cub200 cars196 --skip-pml
    python benchmarks/eval_speed.py --datasets sop --distributed --repeat 2
    python benchmarks/eval_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

import numpy as np

DATASETS = {
    # name: (items, classes, smallest class, largest class, Recall@K cut-offs, noise)
    # The noise puts Recall@1 in the range trained models reach (about 0.6-0.9).
    "cub200": (5924, 100, 40, 80, (1, 2, 4, 8), 3.5),
    "cars196": (8131, 98, 50, 120, (1, 2, 4, 8), 3.5),
    "sop": (60502, 11316, 2, 12, (1, 10, 100, 1000), 2.2),
}
METHODS = ("floor", "ours", "faissbe", "screened", "pml", "faiss", "nmi")
REPEATED = ("floor", "ours", "faissbe", "screened", "faiss")
DIM = 512
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def class_sizes(n: int, classes: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """``classes`` sizes in [lo, hi] summing to ``n`` (random, as even as the bounds allow)."""
    extra = rng.multinomial(n - lo * classes, np.full(classes, 1.0 / classes))
    overflow = int(np.maximum(extra - (hi - lo), 0).sum())
    extra = np.minimum(extra, hi - lo)
    while overflow:  # hand what the full classes could not take to classes with room
        room = np.flatnonzero(extra < hi - lo)
        pick = rng.choice(room, size=min(overflow, room.shape[0]), replace=False)
        extra[pick] += 1
        overflow -= pick.shape[0]
    return lo + extra


def make_data(
    name: str, noise: float | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm embeddings: a random centre per class plus isotropic noise (float32 only,
    generated in blocks so that the peak memory of the process is the inputs)."""
    n, classes, lo, hi, _, default_noise = DATASETS[name]
    noise = default_noise if noise is None else noise
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), class_sizes(n, classes, lo, hi, rng))
    labels = labels[rng.permutation(n)]
    centres = rng.standard_normal((classes, DIM), dtype=np.float32)
    x = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 4096):
        block = centres[labels[s : s + 4096]]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s : s + 4096] = block
    return x, labels


def peak_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(method: str, name: str, noise: float | None, device: str) -> dict:
    """Run one measurement in this (fresh) process and return seconds, peak memory, metrics."""
    import torch

    x, labels = make_data(name, noise)
    ks = DATASETS[name][4]
    if method in ("faiss", "pml", "faissbe"):
        import faiss  # noqa: F401  (import cost is not the method's)
    if method == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from rankedlist.evaluation import nmi, retrieval_metrics
    from rankedlist.evaluation._inputs import auto_chunk_size
    from rankedlist.evaluation._ranking import similarities

    distributed = method == "dist"
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    if device != "cpu":
        xt, yt = xt.to(device), yt.to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = peak_bytes()
    out: dict = {}
    profile: dict = {}
    if distributed:
        dist.barrier()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if method == "floor":
        # The full float32 product, in ours' old chunks and with ours' BLAS, into one buffer.
        chunk = auto_chunk_size(xt.shape[0])
        buf = torch.empty(chunk, xt.shape[0], device=xt.device)
        for s in range(0, xt.shape[0], chunk):
            q = xt[s : s + chunk]
            similarities(q, xt, out=buf[: q.shape[0]])
    elif method in ("ours", "one", "dist"):
        out = retrieval_metrics(xt, yt, ks=ks, profile=profile, distributed=distributed)
    elif method == "faissbe":
        out = retrieval_metrics(xt, yt, ks=ks, backend="faiss")
    elif method == "screened":
        out = retrieval_metrics(xt, yt, ks=ks, backend="screened", profile=profile)
    elif method == "pml":
        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=torch.device(device),
        )
        out = calc.get_accuracy(xt, yt, xt, yt, ref_includes_query=True)
    elif method == "faiss":
        import faiss

        k = int(np.bincount(labels).max())
        index = faiss.IndexFlatIP(DIM)
        index.add(x)
        index.search(x, k)
    elif method == "nmi":
        out = {"nmi": nmi(xt, yt)}
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    if distributed:
        dist.destroy_process_group()
    extra = (torch.cuda.max_memory_allocated() if device != "cpu" else peak_bytes()) - base
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "extra_bytes": max(extra, 0),
        "metrics": out,
        "profile": profile,
    }


def _cmd(method: str, name: str, noise: float | None, device: str) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", method, "--datasets", name, "--device", device]
    return cmd + (["--noise", str(noise)] if noise is not None else [])


def _parse(proc: subprocess.CompletedProcess | tuple, what: str) -> dict:
    rc, stdout, stderr = proc
    if rc != 0:
        raise RuntimeError(f"{what} failed:\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1])


def run_worker(
    method: str, name: str, noise: float | None, device: str, env: dict | None = None
) -> dict:
    proc = subprocess.run(
        _cmd(method, name, noise, device),
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    return _parse((proc.returncode, proc.stdout, proc.stderr), f"{method} on {name}")


def run_distributed(name: str, noise: float | None, world: int) -> dict:
    """``world`` gloo processes of 1 thread each; the slowest one's metric time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {**os.environ, **ONE_THREAD, "RANK": str(rank), "WORLD_SIZE": str(world)}
        env.update(LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(
            subprocess.Popen(
                _cmd("dist", name, noise, "cpu"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for rank, p in enumerate(procs):
        stdout, stderr = p.communicate()
        results.append(_parse((p.returncode, stdout, stderr), f"rank {rank} on {name}"))
    slowest = max(results, key=lambda r: r["seconds"])
    assert all(r["metrics"] == results[0]["metrics"] for r in results)
    return {**slowest, "cpu_seconds": max(r["cpu_seconds"] for r in results)}


def _ratio(sec: dict, a: str, b: str) -> str:
    return f"{sec[a] / sec[b]:.2f}" if a in sec and b in sec else "-"


def _where(profile: dict) -> str:
    phases = [
        ("relevant lists", "relevant lists"),
        ("pre-pass", "pre-pass"),
        ("products", "products"),
        ("screen", "screen"),
        ("bookkeeping", "bookkeeping"),
        ("exchange", "exchange"),
        ("decide", "decide"),
        ("exact recompute", "exact"),
    ]
    total = profile.get("total", 0.0)
    parts = [f"{label} {profile[key]:.2f}" for key, label in phases if key in profile]
    counts = ""
    if "kept entries" in profile:
        counts = (
            f"; kept {profile['kept entries']:,.0f} entries, recomputed exactly "
            f"{profile['recomputed entries']:,.0f}"
        )
    if not parts:
        return f"{total:.2f} s" + "".join(
            f", {k} {v:.2f}" for k, v in profile.items() if k not in ("total", "fallback")
        )
    return f"{total:.2f} s = " + " + ".join(parts) + " + other" + counts


def main_distributed(args: argparse.Namespace) -> None:
    print(f"{args.world} processes x 1 thread (gloo) against 1 process x 1 thread")
    print(
        "\n| dataset | 1 x 1 s | 2 x 1 s | speed-up | CPU s: 1 x 1 / busiest of 2 x 1 "
        "| where 1 x 1 / slowest of 2 x 1 |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.datasets:
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for key in ("one", "dist"):
                if key == "one":
                    r = run_worker("one", name, args.noise, "cpu", env=ONE_THREAD)
                else:
                    r = run_distributed(name, args.noise, args.world)
                if key not in best or r["seconds"] < best[key]["seconds"]:
                    best[key] = r
        assert best["one"]["metrics"] == best["dist"]["metrics"], "distributed numbers differ"
        one, many = best["one"]["seconds"], best["dist"]["seconds"]
        c_one, c_many = best["one"]["cpu_seconds"], best["dist"]["cpu_seconds"]
        print(
            f"| {name} | {one:.1f} | {many:.1f} | {one / many:.2f}x | "
            f"{c_one:.1f} / {c_many:.1f} ({c_one / c_many:.2f}x) | "
            f"{_where(best['one']['profile'])} / {_where(best['dist']['profile'])} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--skip-pml", action="store_true", help="leave PML out (it is slow)")
    parser.add_argument("--skip-nmi", action="store_true", help="leave NMI out")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--noise", type=float, default=None, help="noise / centre scale")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the repeated methods")
    parser.add_argument("--distributed", action="store_true", help="processes against one")
    parser.add_argument("--world", type=int, default=2, help="processes for --distributed")
    parser.add_argument("--worker", choices=(*METHODS, "one", "dist"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.datasets[0], args.noise, args.device)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.distributed:
        main_distributed(args)
        return
    rows = []
    for name in args.datasets:
        methods = [
            m
            for m in METHODS
            if not (m == "pml" and args.skip_pml)
            and not (m == "nmi" and args.skip_nmi)
            and not (m == "screened" and name == "sop")
            and not (m in ("screened", "faissbe") and args.device != "cpu")
        ]
        res: dict[str, dict] = {}
        for rep in range(args.repeat):
            for m in methods:
                if rep and m not in REPEATED:
                    continue
                r = run_worker(m, name, args.noise, args.device)
                if m not in res or r["seconds"] < res[m]["seconds"]:
                    res[m] = r
        ours = res["ours"]
        metric_str = ", ".join(
            f"{k}={v:.3f}" for k, v in ours["metrics"].items() if k != "lone_queries"
        )
        print(f"\n{name}: {metric_str}")
        for m in ("faissbe", "screened"):
            if m in res:
                diff = max(abs(res[m]["metrics"][k] - v) for k, v in ours["metrics"].items())
                print(f"  {m}: largest difference to ours {diff:.1e}")
        if "pml" in res:
            pm = res["pml"]["metrics"]
            print(
                f"  pml: precision_at_1={pm['precision_at_1']:.3f}, "
                f"r_precision={pm['r_precision']:.3f}, "
                f"map@r={pm['mean_average_precision_at_r']:.3f}"
            )
        if "nmi" in res:
            print(f"  nmi={res['nmi']['metrics']['nmi']:.3f}")
        for m in ("ours", "screened"):
            if res.get(m, {}).get("profile"):
                print(f"  where the time goes, {m}: {_where(res[m]['profile'])}")
        rows.append((name, res))

    cols = ("floor", "ours", "faissbe", "screened", "pml", "faiss", "nmi")
    print(
        "\n| dataset | "
        + " | ".join(f"{c} s" for c in cols)
        + " | ours/floor | faissbe/floor | pml/ours | faiss/ours "
        "| extra MiB ours / pml / faiss / nmi |"
    )
    print("|" + "---|" * (len(cols) + 6))
    for name, res in rows:
        sec = {m: r["seconds"] for m, r in res.items()}
        mib = {m: r["extra_bytes"] / 2**20 for m, r in res.items()}
        secs = [f"{sec[m]:.1f}" if m in sec else "-" for m in cols]
        ratios = [
            _ratio(sec, a, b)
            for a, b in (
                ("ours", "floor"),
                ("faissbe", "floor"),
                ("pml", "ours"),
                ("faiss", "ours"),
            )
        ]
        mem = " / ".join(
            f"{mib[m]:.0f}" if m in mib else "-" for m in ("ours", "pml", "faiss", "nmi")
        )
        print(f"| {name} | " + " | ".join(secs + ratios) + f" | {mem} |")


if __name__ == "__main__":
    main()
