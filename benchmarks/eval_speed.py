"""Speed and memory of rankedlist's evaluation against PML, bare faiss and the matmul floor.

Clustered random embeddings of the CUB (5,924 / 100 classes), Cars (8,131 / 98) and SOP
(60,502 / 11,316 classes of 2-12 images) test-set sizes, D = 512. For each dataset, side by
side in one run:

* ``ours``:  ``retrieval_metrics`` with the dataset's Recall@K (R@1000 on SOP), R-Precision, MAP@R;
* ``pml``:   PML's AccuracyCalculator, precision_at_1 + r_precision + MAP@R, k="max_bin_count";
* ``faiss``: a bare IndexFlatIP search with k = the largest class size;
* ``floor``: the chunked similarity products alone (same chunks as ours, nothing selected);
* ``nmi``:   ``rankedlist.evaluation.nmi``.

The CPU may be shared: ``--repeat N`` measures floor, ours and faiss N times, interleaved, and
keeps the fastest of each. Each measurement runs in its own subprocess, so peak memory beyond
the inputs is the growth of ``ru_maxrss`` (CPU) or ``torch.cuda.max_memory_allocated`` (GPU)
over what the inputs took.

    python benchmarks/eval_speed.py                       # all datasets, CPU
    python benchmarks/eval_speed.py --datasets cub200 cars196 --skip-pml
    python benchmarks/eval_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
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
METHODS = ("floor", "ours", "pml", "faiss", "nmi")
DIM = 512


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
    if method in ("faiss", "pml"):
        import faiss  # noqa: F401  (import cost is not the method's)
    if method == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from rankedlist.evaluation import nmi, retrieval_metrics
    from rankedlist.evaluation._inputs import auto_chunk_size
    from rankedlist.evaluation._ranking import similarities

    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    if device != "cpu":
        xt, yt = xt.to(device), yt.to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = peak_bytes()
    out: dict = {}
    t0 = time.perf_counter()
    if method == "floor":
        # The similarity products alone, in ours' chunks and with ours' BLAS, into one buffer.
        chunk = auto_chunk_size(xt.shape[0])
        buf = torch.empty(chunk, xt.shape[0], device=xt.device)
        for s in range(0, xt.shape[0], chunk):
            q = xt[s : s + chunk]
            similarities(q, xt, out=buf[: q.shape[0]])
    elif method == "ours":
        out = retrieval_metrics(xt, yt, ks=ks)
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
    extra = (torch.cuda.max_memory_allocated() if device != "cpu" else peak_bytes()) - base
    return {"seconds": seconds, "extra_bytes": max(extra, 0), "metrics": out}


def run_worker(method: str, name: str, noise: float | None, device: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--datasets", name, "--device", device]
    if noise is not None:
        cmd += ["--noise", str(noise)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(sec: dict, a: str, b: str) -> str:
    return f"{sec[a] / sec[b]:.2f}" if a in sec and b in sec else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--skip-pml", action="store_true", help="leave PML out (it is slow)")
    parser.add_argument("--skip-nmi", action="store_true", help="leave NMI out")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--noise", type=float, default=None, help="noise / centre scale")
    parser.add_argument("--repeat", type=int, default=1, help="runs of floor, ours, faiss")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.datasets[0], args.noise, args.device)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    methods = [
        m
        for m in METHODS
        if not (m == "pml" and args.skip_pml) and not (m == "nmi" and args.skip_nmi)
    ]
    rows = []
    for name in args.datasets:
        res: dict[str, dict] = {}
        for rep in range(args.repeat):
            for m in methods:
                if rep and m in ("pml", "nmi"):
                    continue
                r = run_worker(m, name, args.noise, args.device)
                if m not in res or r["seconds"] < res[m]["seconds"]:
                    res[m] = r
        ours = res["ours"]
        metric_str = ", ".join(
            f"{k}={v:.3f}" for k, v in ours["metrics"].items() if k != "lone_queries"
        )
        print(f"\n{name}: {metric_str}")
        if "pml" in res:
            pm = res["pml"]["metrics"]
            print(
                f"  pml: precision_at_1={pm['precision_at_1']:.3f}, "
                f"r_precision={pm['r_precision']:.3f}, "
                f"map@r={pm['mean_average_precision_at_r']:.3f}"
            )
        if "nmi" in res:
            print(f"  nmi={res['nmi']['metrics']['nmi']:.3f}")
        rows.append((name, res))

    print(
        "\n| dataset | floor s | ours s | pml s | faiss s | nmi s | ours/floor | pml/ours "
        "| faiss/ours | extra MiB ours / pml / faiss / nmi |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, res in rows:
        sec = {m: r["seconds"] for m, r in res.items()}
        mib = {m: r["extra_bytes"] / 2**20 for m, r in res.items()}
        secs = [f"{sec[m]:.1f}" if m in sec else "-" for m in METHODS]
        ratios = [
            _ratio(sec, a, b) for a, b in (("ours", "floor"), ("pml", "ours"), ("faiss", "ours"))
        ]
        mem = " / ".join(
            f"{mib[m]:.0f}" if m in mib else "-" for m in ("ours", "pml", "faiss", "nmi")
        )
        print(f"| {name} | " + " | ".join(secs + ratios) + f" | {mem} |")


if __name__ == "__main__":
    main()
