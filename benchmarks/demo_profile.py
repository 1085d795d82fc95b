"""Where a training step's time goes: cProfile of a shipped recipe's training loop.

    python benchmarks/demo_profile.py                   # the demo recipe, 200 iterations
    python benchmarks/demo_profile.py --iterations 600 --recipe glyphs

Runs ``rankedlist.training.train.main`` (training only: no final test, no report) under cProfile
and splits the loop's time into the data pipeline (the loader's ``__next__``), the model's
forward, the loss, the backward pass, the optimiser step, the rest of the step (divergence checks,
logging values) and the rest of the loop (logging, checkpoints). It also counts the calls into PIL
and torchvision's transforms: per-image work shows up there. cProfile slows Python-heavy code more
than tensor kernels, so the data share it reports is an upper bound of the unprofiled one.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

from rankedlist.training.config import load_config
from rankedlist.training.recipes import find_recipe
from rankedlist.training.train import main as train


def _cumulative(stats: pstats.Stats, where: str, name: str, largest: bool = False) -> float:
    """Cumulative seconds of the functions called ``name`` in files whose path contains
    ``where``: their sum, or with ``largest`` the outermost one (nested forwards)."""
    times = [
        entry[3]
        for (filename, _, function), entry in stats.stats.items()  # type: ignore[attr-defined]
        if function == name and where in filename.replace("\\", "/")
    ]
    if not times:
        return 0.0
    return max(times) if largest else sum(times)


def _calls_into(stats: pstats.Stats, *wheres: str) -> int:
    return sum(
        entry[1]
        for (filename, _, _), entry in stats.stats.items()  # type: ignore[attr-defined]
        if any(w in filename.replace("\\", "/") for w in wheres)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="glyphs")
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            find_recipe(args.recipe),
            [
                f"train.iterations={args.iterations}",
                f"train.run_dir={Path(tmp) / 'run'}",
                "train.tensorboard=false",
            ],
        )
        profile = cProfile.Profile()
        profile.enable()
        train(config, test=False)
        profile.disable()
    stats = pstats.Stats(profile)

    loop = _cumulative(stats, "rankedlist/training/train.py", "train_loop")
    step = _cumulative(stats, "rankedlist/training/step.py", "train_one_step")
    parts = {
        "data pipeline (loader __next__)": _cumulative(
            stats, "torch/utils/data/dataloader.py", "__next__"
        ),
        "model forward": _cumulative(stats, "rankedlist/models/", "forward", largest=True),
        "loss forward": _cumulative(stats, "rankedlist/losses/", "forward", largest=True),
        "backward": _cumulative(stats, "torch/_tensor.py", "backward"),
        "optimiser step": _cumulative(stats, "torch/amp/grad_scaler.py", "step"),
    }
    step_rest = step - sum(v for k, v in parts.items() if not k.startswith("data"))
    loop_rest = loop - step - parts["data pipeline (loader __next__)"]
    parts["rest of the step (checks, collectives)"] = step_rest
    parts["rest of the loop (logging, checkpoints)"] = loop_rest

    print(f"recipe {args.recipe}, {args.iterations} iterations: training loop {loop:.2f} s")
    print("| part | seconds | share of the loop |")
    print("|---|---:|---:|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.2f} | {100 * seconds / loop:.0f}% |")
    calls = _calls_into(stats, "/PIL/", "torchvision/transforms/")
    print(f"calls into PIL and torchvision.transforms: {calls:,}")


if __name__ == "__main__":
    main()
