"""RLL against the pytorch-metric-learning baselines on the embedded glyphs, same budget.

Every recipe shares the demo's backbone (GlyphNet, 128-d), data (P x K batches, augmentation),
optimiser, schedule and number of iterations (``configs/glyphs*.yaml`` inherit ``glyphs.yaml``
and change only the loss); only the loss differs. Each run is a separate ``rankedlist train``
process; the table reads each run's ``metrics.json`` (test classes, never seen in training).

    python benchmarks/glyphs_comparison.py                 # the four recipes, 1 seed
    python benchmarks/glyphs_comparison.py --seeds 0 1 2   # mean over seeds
    python benchmarks/glyphs_comparison.py train.iterations=300   # any override, for all runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECIPES = {
    "RLL (ours)": "glyphs",
    "contrastive": "glyphs_contrastive",
    "triplet, semi-hard": "glyphs_triplet",
    "multi-similarity": "glyphs_ms",
}
COLUMNS = [("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"), ("recall@8", "R@8"),
           ("map@r", "MAP@R"), ("nmi", "NMI")]  # fmt: skip


def run(recipe: str, seed: int, out: Path, overrides: list[str]) -> tuple[dict, float]:
    run_dir = out / f"{recipe}_seed{seed}"
    cmd = [sys.executable, "-m", "rankedlist", "train", "--config", f"configs/{recipe}.yaml",
           "--overwrite", f"train.run_dir={run_dir}", f"train.seed={seed}", "train.report=false",
           "train.tensorboard=false", *overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return json.loads((run_dir / "metrics.json").read_text())["test"], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/glyphs_comparison"))
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES.values()), default=None)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    rows = []
    for label, recipe in RECIPES.items():
        if args.only and recipe not in args.only:
            continue
        results = [run(recipe, seed, args.out, args.overrides) for seed in args.seeds]
        values = {k: [100 * r[0][k] for r in results] for k, _ in COLUMNS}
        seconds = statistics.fmean(r[1] for r in results)
        rows.append((label, recipe, values, seconds))
        r1, mapr = statistics.fmean(values["recall@1"]), statistics.fmean(values["map@r"])
        print(f"done: {label}: R@1 {r1:.1f} MAP@R {mapr:.1f}", flush=True)

    seeds = ", ".join(map(str, args.seeds))
    spread = " ± standard deviation" if len(args.seeds) > 1 else ""
    print(f"\nGlyph test classes, percent, mean{spread} over seeds {seeds}; time = mean wall")
    print("clock per run (training, test evaluation, process start-up)\n")
    print("| loss | recipe | " + " | ".join(h for _, h in COLUMNS) + " | time (s) |")
    print("|---|---|" + "---:|" * (len(COLUMNS) + 1))
    for label, recipe, values, seconds in rows:
        cells = " | ".join(_cell(values[k]) for k, _ in COLUMNS)
        print(f"| {label} | `{recipe}` | {cells} | {seconds:.0f} |")
    return 0


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
