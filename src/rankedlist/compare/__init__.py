"""``rankedlist compare``: losses compared fairly, each tuned alike, tested once per seed.

* :mod:`~rankedlist.compare.plan`: the plan (recipes, trials, seeds, folds, storage, ...), from
  the command line or a YAML file, its values checked;
* :mod:`~rankedlist.compare.checks`: everything checked before anything runs (recipes, data,
  budget, storage) and the shared search dimensions;
* :mod:`~rankedlist.compare.runner`: :func:`run_comparison`, the searches and the final runs,
  shared by any number of processes, resumable after Ctrl-C;
* :mod:`~rankedlist.compare.finals`: the final runs, tested once each (``test_reads.jsonl``);
* :mod:`~rankedlist.compare.results`: ``results.json``.

The command line (``rankedlist compare``) is :mod:`rankedlist.cli.compare`.

Optuna and the training are imported only when a comparison runs.
"""

from __future__ import annotations

from rankedlist.compare.plan import ComparePlan, parse_plan

__all__ = [
    "ComparePlan",
    "CompareInterrupted",
    "parse_plan",
    "run_comparison",
]


def __getattr__(name: str):
    if name in ("run_comparison", "CompareInterrupted"):
        from rankedlist.compare import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'rankedlist.compare' has no attribute {name!r}")
