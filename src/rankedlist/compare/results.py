"""``results.json``: a comparison as plain data, read back from the studies and the run folders.

The schema (what :func:`rankedlist.compare.report.write_compare_report` reads)::

    rankedlist_version, versions {torch, optuna, python},
    plan {recipes, trials, seeds, folds, metric, overrides, iterations, pruner, sampler_seed,
          dataset, protocol},
    test_reads                                 # lines of OUT/test_reads.jsonl, all commands
    losses {recipe: {loss, label, space {dim: {low, high, log} | {choices}, shared},
                     trials [{number, state, value, params, pruned_at, curve [[it, value]]}],
                     best {trial, value, params} | null,
                     tuned {seed: fused test metrics}, untuned {seed: ...}}}

``tuned``/``untuned`` hold the plan's seeds whose run is done (``metrics.json``).
"""

from __future__ import annotations

import math
import platform
from typing import Any

from rankedlist.compare.checks import LossPlan, Resolved, describe_space
from rankedlist.compare.finals import KINDS, FinalRun, read_metrics

__all__ = ["LABELS", "build_results", "label_of"]

#: Display names of the losses (``loss.name`` -> label).
LABELS = {
    "rll": "RLL",
    "contrastive": "contrastive",
    "triplet": "triplet",
    "multi_similarity": "multi-similarity",
    "npair": "N-pair",
    "lifted": "lifted structure",
    "proxy_anchor": "Proxy-Anchor",
}


def label_of(loss: LossPlan, resolved: Resolved) -> str:
    """The loss's display name; the recipe is added when two recipes train the same loss."""
    name = loss.setup.recipe.loss.name
    label = LABELS.get(name, name)
    same = [x for x in resolved.losses if x.setup.recipe.loss.name == name]
    return label if len(same) == 1 else f"{label} ({loss.key})"


def build_results(resolved: Resolved, test_reads: int) -> dict[str, Any]:
    """The results dict of the comparison (see the module docstring)."""
    import optuna
    import torch

    from rankedlist import __version__

    p = resolved.plan
    losses = {}
    for loss in resolved.losses:
        study = optuna.load_study(study_name=loss.study, storage=resolved.optuna_storage)
        losses[loss.key] = {
            "loss": loss.setup.recipe.loss.name,
            "label": label_of(loss, resolved),
            "space": describe_space(loss),
            "trials": [_trial(t) for t in study.get_trials(deepcopy=False) if _shown(t)],
            "best": _best(study),
            **{kind: _metrics(resolved, loss, kind) for kind in KINDS},
        }
    return {
        "rankedlist_version": __version__,
        "versions": {
            "torch": str(torch.__version__),
            "optuna": str(optuna.__version__),
            "python": platform.python_version(),
        },
        "plan": {
            "recipes": [loss.key for loss in resolved.losses],
            "trials": p.trials,
            "seeds": list(p.seeds),
            "folds": p.folds,
            "metric": p.metric,
            "overrides": list(p.overrides),
            "iterations": resolved.iterations,
            "pruner": p.pruner,
            "sampler_seed": p.sampler_seed,
            "dataset": resolved.dataset,
            "protocol": resolved.protocol,
        },
        "test_reads": test_reads,
        "losses": losses,
    }


def _shown(trial: Any) -> bool:
    """Trials that ran: complete, pruned or failed (not waiting, not a surplus claim)."""
    return trial.state.name in ("COMPLETE", "PRUNED", "FAIL") and not trial.user_attrs.get(
        "surplus"
    )


def _trial(trial: Any) -> dict[str, Any]:
    curve = [[int(step), _number(v)] for step, v in sorted(trial.intermediate_values.items())]
    pruned = trial.state.name == "PRUNED"
    pruned_at = trial.user_attrs.get("iteration") or (curve[-1][0] if curve else None)
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": _number(trial.value),
        "params": dict(trial.params),
        "pruned_at": int(pruned_at) if pruned and pruned_at is not None else None,
        "curve": curve,
    }


def _best(study: Any) -> dict[str, Any] | None:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    best = study.best_trial
    return {"trial": best.number, "value": float(best.value), "params": dict(best.params)}


def _metrics(resolved: Resolved, loss: LossPlan, kind: str) -> dict[str, dict[str, Any]]:
    out = {}
    for seed in resolved.plan.seeds:
        metrics = read_metrics(FinalRun(loss, kind, seed, resolved.plan.out))
        if metrics is not None:
            out[str(seed)] = metrics
    return out


def _number(value: Any) -> float | None:
    """A JSON number (None for a missing or non-finite value)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
