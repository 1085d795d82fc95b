"""Shared pieces of the tune tests: a tiny glyph recipe, the command line, a split recorder.

Every trial is a few iterations of a narrow GlyphNet on 32 px glyphs (seconds, not minutes).
``glyphs_recorded`` is the glyph dataset that appends each split it opens to the file named by
``$RANKEDLIST_SPLITS_LOG``: the proof that the search never opens the test split.
"""

from __future__ import annotations

from pathlib import Path

from _tiny_run import QUIET, TINY_LOGGING, TINY_MODEL, register_split_recorder

REPO = Path(__file__).resolve().parents[2]
GLYPHS = str(REPO / "configs" / "glyphs.yaml")
SPLITS_LOG = "RANKEDLIST_SPLITS_LOG"
# The tiny run (tests/_tiny_run.py) on 48 characters, a 1-iteration warm-up, quiet.
TINY = ["data.options={characters: ABCDEFGHJKLMNPQRSTUVWXYZabdefghijkmnqrty23456789}",
        *TINY_MODEL, "schedule.warmup_iters=1", *TINY_LOGGING, *QUIET]  # fmt: skip


def register_recorded_glyphs() -> None:
    """Register ``glyphs_recorded`` once per process."""
    register_split_recorder("glyphs_recorded", SPLITS_LOG)


def run_cli(argv: list[str]) -> int:
    """``rankedlist ARGV`` in-process."""
    import importlib

    cli = importlib.import_module("rankedlist.cli.main")  # the package's `main` is the function
    return cli.main(argv)


def load_study(storage: Path, name: str, create: bool = False):
    """The study ``name`` of the journal file ``storage`` (created, empty, with ``create``)."""
    import optuna

    from rankedlist.tune.study import open_storage

    backend, _, _ = open_storage(str(storage), storage.parent)
    if create:
        return optuna.create_study(study_name=name, storage=backend, direction="maximize")
    return optuna.load_study(study_name=name, storage=backend)
