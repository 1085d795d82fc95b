"""Shared pieces of the compare tests: tiny glyph runs, the command line, a split recorder.

Every trial and final run is a few iterations of a narrow GlyphNet on 32 px glyphs (a second or
two). ``glyphs_splits`` is the glyph dataset that appends each split it opens to the file named
by ``$RANKEDLIST_COMPARE_SPLITS``: the count of the test split's reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _tiny_run import TINY_LOGGING, TINY_MODEL, register_split_recorder

REPO = Path(__file__).resolve().parents[2]
SPLITS_LOG = "RANKEDLIST_COMPARE_SPLITS"
RECORDED = "glyphs_splits"
RECIPES = ["glyphs", "glyphs_ms"]
# The tiny run (tests/_tiny_run.py) on 48 characters, a 1-iteration warm-up, repeatable.
TINY = ["data.options={characters: ABCDEFGHJKLMNPQRSTUVWXYZabdefghijkmnqrty23456789}",
        *TINY_MODEL, "schedule.warmup_iters=1", *TINY_LOGGING,
        "train.deterministic=true"]  # fmt: skip


def register_recorded_glyphs() -> None:
    """Register ``glyphs_splits`` once per process."""
    register_split_recorder(RECORDED, SPLITS_LOG)


def run_cli(argv: list[str]) -> int:
    """``rankedlist ARGV`` in-process (the main command line)."""
    import importlib

    return importlib.import_module("rankedlist.cli.main").main(argv)


def run_recorded(argv: list[str], log: Path) -> int:
    """``rankedlist ARGV`` in-process, every split the glyph data opens appended to ``log``."""
    register_recorded_glyphs()
    previous = os.environ.get(SPLITS_LOG)
    os.environ[SPLITS_LOG] = str(log)
    try:
        return run_cli(argv)
    finally:
        if previous is None:
            os.environ.pop(SPLITS_LOG)
        else:
            os.environ[SPLITS_LOG] = previous


def compare_argv(out: Path, trials: int, seeds: list[int], iterations: int, *extra: str):
    """``compare`` on the tiny glyph recipes, ``train.eval_every`` half the iterations."""
    return [
        "compare", "--recipes", *RECIPES, "--trials", str(trials),
        "--seeds", *map(str, seeds), "--out", str(out), *TINY,
        f"train.iterations={iterations}", f"train.eval_every={max(1, iterations // 2)}", *extra,
    ]  # fmt: skip


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``python -m rankedlist ARGV`` as a real process (output: stdout, stderr merged)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rankedlist", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def load_study(out: Path, name: str, storage: str | None = None):
    """The study ``name`` of the comparison in ``out`` (its journal, or ``storage``)."""
    import optuna

    from rankedlist.tune.study import open_storage

    opened, _, _ = open_storage(storage or str(out / "studies.journal"), out)
    return optuna.load_study(study_name=name, storage=opened)


def logged_reads(out: Path) -> list[tuple[str, str, int]]:
    """(loss, kind, seed) of every line of ``out/test_reads.jsonl``."""
    path = out / "test_reads.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["loss"], r["kind"], r["seed"]) for r in lines]


def run_files(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every final run's metrics.json: relative path -> (bytes, modification time in ns)."""
    return {
        str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted((out / "runs").glob("*/*/*/metrics.json"))
    }


def trained_steps(run_dir: Path) -> list[int]:
    """The training steps a run's metrics.jsonl logged (each once if trained once)."""
    log = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]
