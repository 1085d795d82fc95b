"""Hyper-parameter search for ``rankedlist tune`` on Optuna (the ``tune`` extra).

* :mod:`~rankedlist.tune.space`: the search spaces (the shared ``lr`` and ``k`` of every loss,
  :data:`~rankedlist.tune.space.SHARED_DIMENSIONS`, plus each loss's own shipped in
  ``spaces/*.yaml``; a ``--space`` file overrides them), checked before any trial runs;
  :mod:`~rankedlist.tune.space_file` reads a space file;
* :mod:`~rankedlist.tune.study`: storage (a journal file by default), study, seeded TPE sampler,
  pruner, and claiming exactly N trials across workers;
* :mod:`~rankedlist.tune.trials`: one trial, trained on the validation split only (once per
  validation fold with ``--folds``);
* :mod:`~rankedlist.tune.search`: :func:`tune`, the search from the recipe to ``--out``;
* :mod:`~rankedlist.tune.final`: the best configuration trained once more and tested once;
* :mod:`~rankedlist.tune.report`: ``trials.csv``, ``report.md`` and its pictures.

The command line (``rankedlist tune``) is :mod:`rankedlist.cli.tune`.

Optuna is imported only when a study runs, so ``import rankedlist.tune`` stays light.
"""

from __future__ import annotations

from rankedlist.tune.search import TuneOptions, TuneResult, tune

__all__ = ["TuneOptions", "TuneResult", "tune"]
