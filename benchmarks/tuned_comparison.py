"""RLL against the pytorch-metric-learning baselines on the glyphs, each loss *tuned*.

Every loss gets the same search: ``--trials`` trials of ``rankedlist tune`` (seeded TPE, median
pruner) with the same per-trial budget (the recipe's iterations, or ``train.iterations=...``
below) on the validation classes (``data.val_fraction`` 0.2 of the training classes), its shipped
search space (``rankedlist/tune/spaces``). Then its best configuration (``best.yaml``) is trained
with each seed on all the training classes and tested once per seed. The untuned recipes run at
the same budget with the same seeds, so the table says what tuning bought. Everything runs in
this process (``train.main`` restores the process state between runs), sequentially.

    python benchmarks/tuned_comparison.py                            # 8 trials, seeds 0 1 2
    python benchmarks/tuned_comparison.py --trials 4 train.iterations=60 schedule.warmup_iters=10
    python benchmarks/tuned_comparison.py --only glyphs glyphs_ms    # some of the losses

The markdown table goes to stdout and ``OUT/table.md``; all numbers to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "RLL (ours)": "glyphs",
    "contrastive": "glyphs_contrastive",
    "triplet, semi-hard": "glyphs_triplet",
    "multi-similarity": "glyphs_ms",
}
COLUMNS = [("recall@1", "R@1"), ("map@r", "MAP@R"), ("nmi", "NMI")]
QUIET = ["train.report=false", "train.tensorboard=false"]


def train(config_path: Path, seed: int, run_dir: Path, overrides: list[str]) -> dict:
    from rankedlist.training.config import load_config
    from rankedlist.training.train import main

    config = load_config(
        config_path, [*overrides, *QUIET, f"train.seed={seed}", f"train.run_dir={run_dir}"]
    )
    return main(config, overwrite=True).test_metrics["fused"]


def search(recipe: str, trials: int, out: Path, overrides: list[str], seed: int):
    from rankedlist.tune import TuneOptions, tune

    options = TuneOptions(
        config=REPO / "configs" / f"{recipe}.yaml", trials=trials, study=f"cmp_{recipe}",
        out=out, overrides=[*overrides, *QUIET], seed=seed, search_only=True,
    )  # fmt: skip
    result = tune(options)
    if result.status != "done":
        raise SystemExit(f"the search of {recipe} stopped: {result.status}")
    return result


def summary(results: list[dict]) -> dict[str, tuple[float, float]]:
    out = {}
    for key, _ in COLUMNS:
        values = [100 * r[key] for r in results]
        out[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per loss (default 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/tuned_comparison"))
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES.values()), default=None)
    parser.add_argument("--no-untuned", action="store_true", help="skip the untuned runs")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="for every run")
    args = parser.parse_args(argv)
    command = "python benchmarks/tuned_comparison.py " + shlex.join(
        [*(["--trials", str(args.trials)]), "--seeds", *map(str, args.seeds), *args.overrides]
    )

    rows = []
    for label, recipe in RECIPES.items():
        if args.only and recipe not in args.only:
            continue
        out = args.out / recipe
        start = time.perf_counter()
        result = search(recipe, args.trials, out, args.overrides, args.sampler_seed)
        search_s = time.perf_counter() - start
        tuned = [train(out / "best.yaml", s, out / f"seed{s}", args.overrides) for s in args.seeds]
        tuned_s = time.perf_counter() - start
        row = {
            "label": label, "recipe": recipe, "tuned": summary(tuned), "tuned_runs": tuned,
            "search_s": search_s, "tuned_s": tuned_s, "best": result.best,
            "pruned": sum(1 for line in (out / "trials.csv").read_text().splitlines()
                          if ",pruned," in line),
        }  # fmt: skip
        if not args.no_untuned:
            start = time.perf_counter()
            config = REPO / "configs" / f"{recipe}.yaml"
            untuned = [
                train(config, s, args.out / f"{recipe}_untuned_seed{s}", args.overrides)
                for s in args.seeds
            ]
            row.update(untuned=summary(untuned), untuned_runs=untuned)
            row["untuned_s"] = time.perf_counter() - start
        rows.append(row)
        print(f"{label}: {fmt(row['tuned'])} in {tuned_s:.0f} s", file=sys.stderr, flush=True)

    text = table(rows, args, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    print(text)
    return 0


def fmt(stats: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{h} {stats[k][0]:.1f} ± {stats[k][1]:.1f}" for k, h in COLUMNS)


def table(rows: list[dict], args, command: str) -> str:
    seeds = len(args.seeds)
    lines = [
        f"Tuned: {args.trials} trials per loss on the validation classes, then the best "
        f"configuration trained with {seeds} seeds and tested once each (percent, mean ± std "
        "over the seeds; time = wall clock of the search and the seed runs, on this machine).",
        "",
        "| loss | | R@1 | MAP@R | NMI | trials (pruned) | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in (row["tuned"][k] for k, _ in COLUMNS))
        lines.append(
            f"| {row['label']} | tuned | {cells} | {args.trials} ({row['pruned']}) | "
            f"{row['tuned_s']:.0f} |"
        )
        if "untuned" in row:
            cells = " | ".join(
                f"{m:.1f} ± {s:.1f}" for m, s in (row["untuned"][k] for k, _ in COLUMNS)
            )
            lines.append(f"| | untuned recipe | {cells} | | {row['untuned_s']:.0f} |")
    lines += ["", f"Command: `{command}`", ""]
    ranked = sorted(rows, key=lambda r: -r["tuned"]["map@r"][0])
    if len(ranked) > 1:
        first, second = ranked[0], ranked[1]
        gap = first["tuned"]["map@r"][0] - second["tuned"]["map@r"][0]
        noise = max(first["tuned"]["map@r"][1], second["tuned"]["map@r"][1])
        verdict = "within the seed noise" if gap <= noise else "more than the seed noise"
        lines.append(
            f"Winner by MAP@R: {first['label']}, {gap:+.1f} points over {second['label']} "
            f"({verdict}, largest std {noise:.1f})."
        )
        if first["recipe"] != "glyphs":
            rll = next((r for r in rows if r["recipe"] == "glyphs"), None)
            if rll is not None:
                lines.append(
                    f"RLL does not win: {first['tuned']['map@r'][0] - rll['tuned']['map@r'][0]:.1f}"
                    f" MAP@R points behind {first['label']}."
                )
    for row in rows:
        lines.append(f"- {row['label']} best trial: {' '.join(row['best'].get('overrides', []))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
