"""Does an ImageNet-pretrained backbone help on the glyphs, and does a cross-batch memory help
once the backbone is pretrained? EfficientNet-Lite0 (weights from the installed ``pretrained``
extra, no download) fine-tuned with RLL, contrastive and multi-similarity.

Every run is a separate ``rankedlist train`` process on the ``glyphs_efficientnet`` recipe; the
baselines take their loss section from the shipped ``glyphs_contrastive`` / ``glyphs_ms`` recipes
(written to OUT/recipes as two-line children of ``glyphs_efficientnet``). The configurations:

* ``pretrained``: the recipe as shipped (trunk lr 1e-3, head 2x, ImageNet's BatchNorm statistics
  frozen);
* ``scratch``: ``model.pretrained=false`` and, as a from-scratch network needs, BatchNorm that
  learns and the whole network at the head's rate (``model.freeze_bn=false optim.lr=0.002
  optim.lr_multiplier=1``, the demo's rate);
* ``memory``: pretrained, with ``loss.memory_size`` rows filled and used from ``loss.memory_start``
  (RLL's own memory; PML's ``CrossBatchMemory`` for the baselines);
* ``BN not frozen``: pretrained RLL with ``model.freeze_bn=false`` (BatchNorm statistics of the
  glyph batches).

The table reads each run's ``metrics.json`` (test classes, never seen in training).

    python benchmarks/glyphs_pretrained.py                         # 100 iterations, seeds 0 1 2
    python benchmarks/glyphs_pretrained.py --seeds 0 --losses RLL  # a quick look
    python benchmarks/glyphs_pretrained.py --report                # the table of the runs so far
    python benchmarks/glyphs_pretrained.py --jobs 2                # two runs at once, 1 thread each

Runs already in OUT/results.json (or finished in their folders) are not run again, so an
interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOSSES = {"RLL": "glyphs", "contrastive": "glyphs_contrastive", "multi-similarity": "glyphs_ms"}
SETTINGS = ("pretrained", "scratch", "memory", "BN not frozen")
COLUMNS = [("recall@1", "R@1"), ("map@r", "MAP@R"), ("nmi", "NMI")]
RECIPE = "glyphs_efficientnet"


def recipe_for(loss: str, out: Path) -> str:
    """The recipe of ``loss``: the shipped one for RLL, else a child with the baseline's loss."""
    if loss == "RLL":
        return RECIPE
    import yaml

    from rankedlist.training.recipes import shipped_recipe

    section = yaml.safe_load(Path(shipped_recipe(LOSSES[loss])).read_text())["loss"]
    path = out / "recipes" / f"{RECIPE}_{LOSSES[loss]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"base": RECIPE, "loss": section}, sort_keys=False))
    return str(path)


def overrides_for(setting: str, args: argparse.Namespace) -> list[str]:
    """What a setting changes in the recipe."""
    if setting == "scratch":
        return [
            "model.pretrained=false", "model.freeze_bn=false", "optim.lr=0.002",
            "optim.lr_multiplier=1",
        ]  # fmt: skip
    if setting == "memory":
        return [f"loss.memory_size={args.memory}", f"loss.memory_start={args.start}"]
    if setting == "BN not frozen":
        return ["model.freeze_bn=false"]
    return []


def run(loss: str, setting: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.out / f"{LOSSES[loss]}_{setting.replace(' ', '_')}_seed{seed}"
    cmd = [sys.executable, "-m", "rankedlist", "train", "--config", args.recipes[loss],
           "--overwrite", f"train.run_dir={run_dir}", f"train.seed={seed}",
           f"train.iterations={args.iterations}", "train.report=false",
           "train.tensorboard=false", *overrides_for(setting, args), *args.overrides]  # fmt: skip
    if args.jobs > 1:
        cmd.append("train.num_threads=1")  # runs side by side, not threads fighting for cores
    finished = _finished(run_dir, cmd[cmd.index("--config") + 1], cmd[cmd.index("--overwrite") :])
    if finished is not None:
        return finished
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    return {"seed": seed, "test": test, "seconds": time.perf_counter() - start}


def _finished(run_dir: Path, recipe: str, overrides: list[str]) -> dict | None:
    """A run this benchmark finished but did not record (it was stopped while the run went on):
    its metrics, if its folder holds them for this very configuration (threads and folder aside);
    the time from its files."""
    import yaml

    from rankedlist.training.config import load_config
    from rankedlist.training.recipes import find_recipe

    metrics, config = run_dir / "metrics.json", run_dir / "config.yaml"
    if not (metrics.is_file() and config.is_file()):
        return None
    wanted = load_config(find_recipe(recipe), overrides[1:]).to_dict()
    found = yaml.safe_load(config.read_text())
    for section in (wanted, found):
        section["train"].pop("num_threads", None)
        section["train"].pop("run_dir", None)  # a run moved between folders is the same run
    if found != wanted:
        return None
    seconds = metrics.stat().st_mtime - config.stat().st_mtime
    seed = wanted["train"]["seed"]
    return {"seed": seed, "test": json.loads(metrics.read_text())["test"], "seconds": seconds}


def configurations(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(loss, setting) pairs: every loss pretrained, from scratch and with memory; BatchNorm not
    frozen for RLL only."""
    return [
        (loss, setting)
        for loss in args.losses
        for setting in args.settings
        if setting != "BN not frozen" or loss == "RLL"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--memory", type=int, default=1024, help="loss.memory_size")
    parser.add_argument("--start", type=int, default=30, help="loss.memory_start")
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("runs/glyphs_pretrained"))
    parser.add_argument("--report", action="store_true", help="only the table of OUT/results.json")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each on 1 thread)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results: dict[str, list[dict]] = (
        json.loads(results_file.read_text()) if results_file.is_file() else {}
    )
    if args.report:
        report(results, args)
        return 0
    args.recipes = {loss: recipe_for(loss, args.out) for loss in args.losses}
    # Seed by seed, so that an interrupted benchmark still has whole seeds.
    todo = [
        (loss, setting, seed)
        for seed in args.seeds
        for loss, setting in configurations(args)
        if not any(r["seed"] == seed for r in results.get(f"{loss}/{setting}", []))
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [(job, pool.submit(run, *job, args)) for job in todo]
        for (loss, setting, seed), future in futures:
            r = future.result()
            results.setdefault(f"{loss}/{setting}", []).append(r)
            print(
                f"done: {loss} {setting} seed {seed}: R@1 {100 * r['test']['recall@1']:.1f} "
                f"MAP@R {100 * r['test']['map@r']:.1f} ({r['seconds']:.0f} s)",
                flush=True,
            )
            results_file.write_text(json.dumps(results, indent=1))
    report(results, args)
    return 0


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    """The table of the seeds each configuration has finished."""
    print(
        f"\nGlyph test classes, percent, mean ± std over seeds; {args.iterations} iterations; "
        f"memory {args.memory} rows from iteration {args.start}; time = mean wall clock per run\n"
    )
    print("| loss | backbone | seeds | " + " | ".join(h for _, h in COLUMNS) + " | time (s) |")
    print("|---|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    for loss, setting in configurations(args):
        runs = results.get(f"{loss}/{setting}", [])
        if runs:
            cells = " | ".join(_cell([100 * r["test"][k] for r in runs]) for k, _ in COLUMNS)
            seconds = statistics.fmean(r["seconds"] for r in runs)
            print(f"| {loss} | {setting} | {len(runs)} | {cells} | {seconds:.0f} |")


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
