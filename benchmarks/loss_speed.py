"""Speed and peak memory of RankedListLoss (forward + backward) against PML and the floor.

For each batch size B (D = 512, class-balanced labels with K = 4 images per class) and two
settings, it times forward + backward of

* ``ours``: ``rankedlist.RankedListLoss`` with the paper's gradient (the default),
* ``pml``: pytorch-metric-learning's ``RankedListLoss(imbalance=0.5)`` where it fits in memory,
* ``floor``: the bare distance matrix, ``X @ X.T`` forward plus its backward (with a precomputed
  B x B output gradient): no loss can be much cheaper than this,

and prints the ratios ours/floor and PML/ours, the absolute times and the peak memory. The two
settings are the paper's hyper-parameters on random normalised embeddings (few active pairs) and
``alpha = 1.6, margin = 1.0``, where every pair of random 512-d unit vectors is active.

A second table ranks B = 512 queries against the batch plus a cross-batch memory of M = 65,536
rows (``rankedlist.losses.MemoryRankedListLoss``, the memory full, SOP-like labels and sample
indices) against its floor: the queries x gallery product ``X @ G.T`` and the gradient product
(its backward with respect to X), with no loss at all.

Each (setting, B, method) runs in a fresh subprocess, so that the peak memory (``ru_maxrss`` on
CPU, ``torch.cuda.max_memory_allocated`` on CUDA) is measured above a baseline taken after the
imports and the inputs. Noise guards: warm-up calls, several timed repeats, the median, and a
round is run again (up to three times; not with --quick) when its spread exceeds 25% of the
median or when another process held a core (our threads were on a core < 80% of the wall time).

Usage::

    python benchmarks/loss_speed.py             # B = 180, 1024, 4096, 16384 (a few minutes)
    python benchmarks/loss_speed.py --quick     # B = 180, 1024, few repeats (under a minute)
    python benchmarks/loss_speed.py --sizes 512 2048 --device cuda
    python benchmarks/loss_speed.py --memory-only   # only the memory rows (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings

DIM = 512
K = 4
SETTINGS = {
    "paper": {"margin": 0.4, "alpha": 1.2, "Tn": 10.0},
    "all-active": {"margin": 1.0, "alpha": 1.6, "Tn": 10.0},
}
# PML keeps 13-15 float32 B x B matrices alive: skip it above this estimate.
PML_MAX_BYTES = 4 * 1024**3
PML_MAX_B = 4096
SPREAD_LIMIT = 0.25
BUSY_LIMIT = 0.8
MAX_ROUNDS = 3
# The memory rows: B queries against B + M gallery rows, labels and sample ids drawn like SOP's
# (11,318 training classes, 59,551 images).
MEMORY_B, MEMORY_M, MEMORY_CLASSES, MEMORY_SAMPLES = 512, 65536, 11318, 59551


def _rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def worker(spec: dict) -> dict:
    """Time one configuration in this (fresh) process and measure its peak memory."""
    import torch

    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    b, hyper, method = spec["B"], SETTINGS[spec["setting"]], spec["method"]

    x = torch.nn.functional.normalize(torch.randn(b, DIM, device=device), dim=1)
    x.requires_grad_(True)
    labels = torch.arange(b, device=device) // K

    if method.startswith("memory"):
        step = _memory_step(spec, x, labels, hyper, device)
    elif method == "floor":
        grad_out = torch.randn(b, b, device=device)

        def step():
            (x @ x.T).backward(grad_out)

    elif method == "ours":
        from rankedlist import RankedListLoss

        loss_fn = RankedListLoss(**hyper)

        def step():
            loss_fn(x, labels).backward()

    elif method == "pml":
        from pytorch_metric_learning.losses import RankedListLoss as PMLRankedListLoss

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PML warns about Tn > 5 (float16 overflow risk)
            loss_fn = PMLRankedListLoss(imbalance=0.5, **hyper)

        def step():
            loss_fn(x, labels).backward()

    else:
        raise ValueError(f"unknown method {method!r}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()

    for _ in range(spec["warmup"]):
        step()
        x.grad = None
    sync()

    threads = torch.get_num_threads()
    rounds = []
    for _ in range(spec["max_rounds"]):
        times, cpu_times = [], []
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for _ in range(spec["repeats"]):
            start, cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu)
            x.grad = None
        # Share of the wall time our threads were on a core: a thread that another process
        # preempted stops accumulating CPU time (OpenMP threads spin while they wait).
        busy = (time.process_time() - cpu_start) / ((time.perf_counter() - wall_start) * threads)
        med = statistics.median(times)
        spread = (max(times) - min(times)) / med
        quiet = spread <= SPREAD_LIMIT and (device.type == "cuda" or busy >= BUSY_LIMIT)
        rounds.append((not quiet, spread, med, busy, statistics.median(cpu_times)))
        if quiet:
            break
    noisy, spread, med, busy, cpu_med = min(rounds)  # the quietest round
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss_bytes()) - base
    return {
        "ms": med * 1e3,
        "cpu_ms": cpu_med * 1e3,
        "spread": spread,
        "busy": busy,
        "noisy": noisy,
        "rounds": len(rounds),
        "peak_bytes": max(peak, 0),
    }


def _memory_step(spec: dict, x, labels, hyper: dict, device):
    """forward + backward of RLL against batch + a full memory, or of its floor."""
    import torch

    from rankedlist.losses import MemoryBank, MemoryRankedListLoss, RankedListLoss

    m, b = spec["M"], x.shape[0]
    if spec["method"] == "memory-floor":
        grad_out = torch.randn(b, m + b, device=device)
        gallery = torch.randn(m + b, DIM, device=device)  # normalised in place: no transient
        gallery.div_(torch.linalg.vector_norm(gallery, dim=1, keepdim=True))
        gallery[:b] = x.detach()

        def step():
            (x @ gallery.T).backward(grad_out)

        return step
    # memory_size counts the batch too (XBM's meaning): M earlier rows need a bank of M + B.
    bank = MemoryBank(m + b, DIM).to(device)
    for start in range(0, m, 4096):  # filled in slices: no M x D transient before the baseline
        rows = torch.nn.functional.normalize(torch.randn(min(4096, m - start), DIM), dim=1)
        bank.enqueue(
            rows.to(device),
            torch.randint(0, MEMORY_CLASSES, (rows.shape[0],), device=device),
            torch.randint(0, MEMORY_SAMPLES, (rows.shape[0],), device=device),
        )
    loss_fn = MemoryRankedListLoss(RankedListLoss(**hyper), bank)
    ids = torch.randint(0, MEMORY_SAMPLES, (b,), device=device)

    def step():
        loss_fn(x, labels, ids).backward()  # also enqueues the batch, as in training

    return step


def run_one(spec: dict) -> dict | None:
    """Run a configuration in a fresh interpreter; None when it failed (e.g. out of memory)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  ! {spec['method']} B={spec['B']} failed: {last}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pml_fits(b: int, device: str) -> bool:
    return b <= PML_MAX_B and 15 * 4 * b * b <= PML_MAX_BYTES


def fmt_mib(result: dict | None) -> str:
    return "-" if result is None else f"{result['peak_bytes'] / 2**20:.0f}"


def fmt_ms(result: dict | None) -> str:
    if result is None:
        return "-"
    flag = "*" if result["noisy"] else ""
    return f"{result['ms']:.1f}{flag}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B = 180, 1024 with few repeats")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default: see --quick)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--no-pml", action="store_true", help="skip pytorch-metric-learning")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory rows")
    parser.add_argument("--memory-only", action="store_true", help="only the memory rows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    sizes = args.sizes or ([180, 1024] if args.quick else [180, 1024, 4096, 16384])
    threads = args.threads or torch.get_num_threads()
    try:
        import pytorch_metric_learning

        pml_version = pytorch_metric_learning.__version__
    except ImportError:
        pml_version = None
    use_pml = pml_version is not None and not args.no_pml

    print(
        f"# RankedListLoss forward+backward, D={DIM}, K={K}, device={args.device}, "
        f"torch {torch.__version__} with {threads} threads, PML {pml_version or 'not installed'}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "# times: median wall ms (* = still noisy after the re-runs: spread > 25% or our threads "
        "on a core < 80% of the time); CPU: the same ratios from process CPU time, which another "
        "process cannot inflate with one thread; peak: MiB above the baseline"
    )
    print()
    header = (
        "| setting | B | ours/floor | PML/ours | ours ms | floor ms | PML ms "
        "| ours/floor CPU | PML/ours CPU | ours MiB | floor MiB | PML MiB |"
    )
    t0 = time.time()
    if not args.memory_only:
        print(header)
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    floors: dict[int, dict | None] = {}
    for setting in SETTINGS if not args.memory_only else ():
        for b in sizes:
            big = b >= 4096
            spec = {
                "B": b, "setting": setting, "device": args.device, "threads": args.threads,
                "warmup": 1 if (big or args.quick) else 2,
                "repeats": 3 if (big or args.quick) else 7,
                "max_rounds": 1 if args.quick else MAX_ROUNDS,
            }  # fmt: skip
            if b not in floors:
                floors[b] = run_one({**spec, "method": "floor"})
            floor = floors[b]
            ours = run_one({**spec, "method": "ours"})
            pml = (
                run_one({**spec, "method": "pml"}) if use_pml and pml_fits(b, args.device) else None
            )
            ratio = f"{ours['ms'] / floor['ms']:.2f}" if ours and floor else "-"
            speedup = f"{pml['ms'] / ours['ms']:.1f}x" if ours and pml else "-"
            cpu_ratio = f"{ours['cpu_ms'] / floor['cpu_ms']:.2f}" if ours and floor else "-"
            cpu_speedup = f"{pml['cpu_ms'] / ours['cpu_ms']:.1f}x" if ours and pml else "-"
            print(
                f"| {setting} | {b} | {ratio} | {speedup} | {fmt_ms(ours)} | {fmt_ms(floor)} "
                f"| {fmt_ms(pml)} | {cpu_ratio} | {cpu_speedup} | {fmt_mib(ours)} "
                f"| {fmt_mib(floor)} | {fmt_mib(pml)} |",
                flush=True,
            )
    if not args.no_memory:
        _memory_table(args)
    print()
    print(f"# done in {time.time() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")
    return 0


def _memory_table(args: argparse.Namespace) -> None:
    print()
    print(
        "| setting | B | memory M | ours/floor | ours ms | floor ms | ours/floor CPU "
        "| ours MiB | floor MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setting in SETTINGS:
        spec = {
            "B": MEMORY_B, "M": MEMORY_M, "setting": setting, "device": args.device,
            "threads": args.threads, "warmup": 1, "repeats": 3,
            "max_rounds": 1 if args.quick else MAX_ROUNDS,
        }  # fmt: skip
        floor = run_one({**spec, "method": "memory-floor"})
        ours = run_one({**spec, "method": "memory-ours"})
        ratio = f"{ours['ms'] / floor['ms']:.2f}" if ours and floor else "-"
        cpu_ratio = f"{ours['cpu_ms'] / floor['cpu_ms']:.2f}" if ours and floor else "-"
        print(
            f"| {setting} | {MEMORY_B} | {MEMORY_M:,} | {ratio} | {fmt_ms(ours)} "
            f"| {fmt_ms(floor)} | {cpu_ratio} | {fmt_mib(ours)} | {fmt_mib(floor)} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
