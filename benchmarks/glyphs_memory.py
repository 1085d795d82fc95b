"""Does a cross-batch memory help on the embedded glyphs? RLL, contrastive and multi-similarity
with and without a memory, same backbone, data, iterations and seeds.

Every run is a separate ``rankedlist train`` process on a shipped glyph recipe (``glyphs``,
``glyphs_contrastive``, ``glyphs_ms``) with ``loss.memory_size`` / ``loss.memory_start`` as the
only change: RLL ranks each query against batch + memory as one ranked list; the baselines use
pytorch-metric-learning's ``CrossBatchMemory``. The table reads each run's ``metrics.json``
(test classes, never seen in training); the plot shows RLL's active negatives per query over
training (``active_neg`` in ``metrics.jsonl``), with and without memory, for the first seed.

    python benchmarks/glyphs_memory.py                          # 300 iterations, seeds 0 1 2
    python benchmarks/glyphs_memory.py --iterations 600 --seeds 0
    python benchmarks/glyphs_memory.py --sizes 512 1024 --start 100
    python benchmarks/glyphs_memory.py --losses RLL --seeds 1 2 --out runs/more
    python benchmarks/glyphs_memory.py --report     # the table of the runs done so far

The training split has 1,652 images (88 classes) and a batch 128 (32 x 4): a memory of 1,024 rows
holds the last 8 batches, so it often holds older copies of the batch's own images (excluded from
their ranked lists by dataset index).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOSSES = {"RLL": "glyphs", "contrastive": "glyphs_contrastive", "multi-similarity": "glyphs_ms"}
COLUMNS = [("recall@1", "R@1"), ("map@r", "MAP@R")]


def run(recipe: str, memory: int, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.out / f"{recipe}_mem{memory}_seed{seed}"
    cmd = [sys.executable, "-m", "rankedlist", "train", "--config", f"configs/{recipe}.yaml",
           "--overwrite", f"train.run_dir={run_dir}", f"train.seed={seed}",
           f"train.iterations={args.iterations}", "train.log_every=10", "train.report=false",
           "train.tensorboard=false", f"loss.memory_size={memory}",
           f"loss.memory_start={args.start if memory else 0}", *args.overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    return {"test": test, "seconds": time.perf_counter() - start, "run_dir": str(run_dir)}


def configurations(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """RLL without and with each memory size; the baselines without and with the largest."""
    out = []
    for loss in args.losses:
        sizes = args.sizes if loss == "RLL" else [max(args.sizes)]
        out += [(loss, LOSSES[loss], m) for m in [0, *sizes]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--start", type=int, default=100, help="loss.memory_start")
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    parser.add_argument("--out", type=Path, default=Path("runs/glyphs_memory"))
    parser.add_argument(
        "--report", action="store_true", help="only the table and plot of OUT/results.json"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        report(json.loads((args.out / "results.json").read_text()), args)
        return 0

    results: dict[str, list[dict]] = {}
    # Seed by seed, so that an interrupted benchmark still has whole seeds.
    for seed in args.seeds:
        for loss, recipe, memory in configurations(args):
            key = f"{recipe}/{memory}"
            results.setdefault(key, []).append(run(recipe, memory, seed, args))
            r = results[key][-1]
            r1 = 100 * r["test"]["recall@1"]
            print(f"done: {loss} memory {memory} seed {seed}: R@1 {r1:.1f} ({r['seconds']:.0f} s)")
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, args)
    return 0


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """The table (the seeds each configuration has finished) and the plot."""
    print(
        f"\nGlyph test classes, percent, mean ± std over seeds; {args.iterations} iterations, "
        f"memory from iteration {args.start}; time = mean wall clock per run\n"
    )
    print("| loss | memory | seeds | " + " | ".join(h for _, h in COLUMNS) + " | time (s) |")
    print("|---|---:|---:|" + "---:|" * (len(COLUMNS) + 1))
    for loss, recipe, memory in configurations(args):
        runs = results.get(f"{recipe}/{memory}", [])
        if not runs:
            continue
        cells = " | ".join(_cell([100 * r["test"][k] for r in runs]) for k, _ in COLUMNS)
        seconds = statistics.fmean(r["seconds"] for r in runs)
        print(f"| {loss} | {memory or '-'} | {len(runs)} | {cells} | {seconds:.0f} |")
    if all(f"glyphs/{m}" in results for m in [0, *args.sizes]):
        print(f"\nactive pairs over training: {plot_active_negatives(results, args)}")


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def plot_active_negatives(results: dict[str, list[dict]], args: argparse.Namespace) -> Path:
    """RLL's active negatives (and positives) per query over training, first seed, one line per
    memory size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_neg, ax_pos) = plt.subplots(1, 2, figsize=(10, 3.6))
    for memory in [0, *args.sizes]:
        run_dir = Path(results[f"glyphs/{memory}"][0]["run_dir"])
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "active_neg" in r]
        label = f"memory {memory}" if memory else "no memory"
        ax_neg.plot([r["step"] for r in rows], [r["active_neg"] for r in rows], label=label)
        ax_pos.plot([r["step"] for r in rows], [r["active_pos"] for r in rows], label=label)
    for ax, what in ((ax_neg, "negatives"), (ax_pos, "positives")):
        ax.axvline(args.start, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"active {what} per query")
        ax.grid(alpha=0.3)
    ax_neg.set_yscale("log")
    ax_neg.legend()
    fig.suptitle(f"RLL on glyphs, seed {args.seeds[0]}: non-trivial pairs over batch + memory")
    fig.tight_layout()
    path = args.out / "active_negatives.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
