"""The plain sentences that open a comparison's ``report.md``, generated from the numbers.

Every loss is treated alike (the toolkit's own loss has no special case): who leads among the
tuned losses on the plan's metric and on Recall@1, by how many points, and whether the two 95%
intervals separate; what tuning bought each loss; the budget; the runs still missing; and warnings
when the budget is too small to trust. Numbers are percent with one decimal, the way the tables
print them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rankedlist.compare.statistics import (
    Summary,
    intervals_overlap,
    metric_name,
    missing_seeds,
    summary_of,
)

__all__ = [
    "DEFAULT_METRIC",
    "budget_sentence",
    "expected_test_reads",
    "headline_metrics",
    "lead_sentence",
    "missing_sentence",
    "ranking_sentence",
    "summary_sentences",
    "tuning_sentence",
    "warnings",
]

#: The primary metric when the plan names none.
DEFAULT_METRIC = "map@r"
#: Fewer seeds than this and the intervals mean little.
MIN_SEEDS = 3
_NO_PRUNER = (None, "", "none", "nop")


def headline_metrics(results: Mapping[str, Any]) -> list[str]:
    """The plan's metric first, then Recall@1 (or MAP@R when the plan's metric is Recall@1)."""
    primary = results["plan"].get("metric") or DEFAULT_METRIC
    return [primary, "map@r" if primary == "recall@1" else "recall@1"]


def _tuned(results: Mapping[str, Any], metric: str) -> list[tuple[str, Summary]]:
    """``(label, summary)`` of every loss with a tuned value on ``metric``, plan order."""
    out = []
    for loss in results["losses"].values():
        summary = summary_of(loss, "tuned", metric)
        if summary is not None:
            out.append((loss["label"], summary))
    return out


def _interval_clause(a: Summary, b: Summary, both: str) -> str:
    """How two 95% intervals relate, as the end of a sentence (with its full stop)."""
    overlap = intervals_overlap(a, b)
    if overlap is None:
        return f"; a single seed gives no 95% interval: {both} is untested."
    if overlap:
        return ", but their 95% intervals overlap: a tie at this budget."
    return " and the intervals do not overlap."


def lead_sentence(results: Mapping[str, Any], metric: str) -> str:
    """Who leads the tuned losses on ``metric``, over whom, by how much, and whether it holds."""
    name = metric_name(metric)
    entries = _tuned(results, metric)
    if not entries:
        return f"No tuned run has a test {name} yet."
    if len(entries) == 1:
        label, s = entries[0]
        return f"Only {label} has a tuned test {name} so far ({s.mean:.1f}): nothing to compare."
    (a, sa), (b, sb) = sorted(entries, key=lambda e: -e[1].mean)[:2]  # stable: plan order on ties
    gap = sa.mean - sb.mean
    if f"{gap:.1f}" == "0.0":
        text = f"{a} and {b} are level on tuned {name} ({sa.mean:.1f} against {sb.mean:.1f})"
    else:
        text = f"{a} leads {b} by {gap:.1f} {name} points ({sa.mean:.1f} against {sb.mean:.1f})"
    return text + _interval_clause(sa, sb, "the difference")


def ranking_sentence(results: Mapping[str, Any], metric: str) -> str | None:
    """All tuned losses on ``metric``, best first, each with its gap to the leader (more than two
    losses only: with two the lead sentence says it all)."""
    entries = sorted(_tuned(results, metric), key=lambda e: -e[1].mean)
    if len(entries) < 3:
        return None
    best = entries[0][1].mean
    parts = [f"{entries[0][0]} {best:.1f}"]
    parts += [f"{label} {s.mean:.1f} ({s.mean - best:+.1f})" for label, s in entries[1:]]
    return f"Tuned {metric_name(metric)}, best first: " + "; ".join(parts) + "."


def tuning_sentence(loss: Mapping[str, Any], metric: str) -> str | None:
    """What tuning bought ``loss`` on ``metric`` (tuned - untuned); ``None`` until both have run."""
    tuned, untuned = summary_of(loss, "tuned", metric), summary_of(loss, "untuned", metric)
    if tuned is None or untuned is None:
        return None
    label, name = loss["label"], metric_name(metric)
    gap = tuned.mean - untuned.mean
    both = f"({untuned.mean:.1f} untuned, {tuned.mean:.1f} tuned)"
    if f"{abs(gap):.1f}" == "0.0":
        text = f"Tuning left {label}'s {name} where its untuned recipe had it {both}"
    elif gap > 0:
        text = f"Tuning bought {label} {gap:.1f} {name} points {both}"
    else:
        text = (
            f"{label}'s tuned configuration tested {-gap:.1f} {name} points below its untuned "
            f"recipe {both}"
        )
    return text + _interval_clause(tuned, untuned, "the change")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def budget_sentence(results: Mapping[str, Any]) -> str:
    """The search and the seed runs every loss had."""
    plan = results["plan"]
    seeds = list(plan["seeds"])
    pruner = plan.get("pruner")
    pruning = "no pruner" if pruner in _NO_PRUNER else f"the {pruner} pruner"
    return (
        f"Budget, the same for every loss: a search of {_plural(plan['trials'], 'trial')} × "
        f"{_plural(plan['iterations'], 'iteration')} per trial on "
        f"{_plural(plan['folds'], 'validation fold')} with {pruning} (sampler seed "
        f"{plan['sampler_seed']}), then the best configuration and the untuned recipe each "
        f"trained and tested once per seed ({_plural(len(seeds), 'seed')}: "
        f"{', '.join(map(str, seeds))}) on {plan['dataset']} ({plan['protocol']} protocol)."
    )


def missing_sentence(results: Mapping[str, Any]) -> str | None:
    """The seed runs of the plan that have not finished yet, or ``None`` when none is missing."""
    parts = []
    for recipe, loss in results["losses"].items():
        for variant in ("tuned", "untuned"):
            seeds = missing_seeds(results, recipe, variant)
            if seeds:
                which = "seed" if len(seeds) == 1 else "seeds"
                parts.append(f"{loss['label']} {variant} {which} {', '.join(map(str, seeds))}")
    if not parts:
        return None
    return "Not finished yet (left out of every number): " + "; ".join(parts) + "."


def expected_test_reads(results: Mapping[str, Any]) -> int:
    """Test reads the plan needs: tuned and untuned, once per seed, for every loss."""
    plan = results["plan"]
    return 2 * len(plan["seeds"]) * len(plan["recipes"])


def warnings(results: Mapping[str, Any]) -> list[str]:
    """Why the budget may be too small to trust, each as a sentence starting ``Warning:``."""
    out = []
    seeds = len(results["plan"]["seeds"])
    if seeds < MIN_SEEDS:
        why = (
            "there is no 95% interval at all"
            if seeds < 2
            else "the 95% intervals rest on two values and are too wide to mean much"
        )
        out.append(
            f"Warning: {_plural(seeds, 'seed')} (fewer than {MIN_SEEDS}): {why}; no difference "
            "here is a tested one (run more --seeds)."
        )
    for loss in results["losses"].values():
        out += _search_warnings(loss)
    reads, expected = results["test_reads"], expected_test_reads(results)
    if reads > expected:
        out.append(
            f"Warning: the test split was read {reads} times, more than the {expected} runs of "
            "the plan: some run was tested more than once."
        )
    return out


def _search_warnings(loss: Mapping[str, Any]) -> list[str]:
    label, trials, best = loss["label"], loss["trials"], loss.get("best")
    total = len(trials)
    out = []
    failed = sum(t["state"] == "FAIL" for t in trials)
    pruned = sum(t["state"] == "PRUNED" for t in trials)
    if total and failed == total:
        out.append(
            f"Warning: all {_plural(total, 'trial')} of {label} failed: it has no tuned "
            "configuration."
        )
    if 2 * pruned > total:
        out.append(
            f"Warning: {pruned} of {total} trials of {label} were pruned: its search saw few "
            "full runs, so its best configuration is weakly chosen."
        )
    if best is not None and best["trial"] == 0 and total > 2:
        out.append(
            f"Warning: {label}'s best configuration is trial 0, the first of its {total} trials: "
            "the search found nothing better than its first try (more --trials may)."
        )
    return out


def summary_sentences(results: Mapping[str, Any]) -> list[str]:
    """The sentences that open ``report.md``, in order: the leads (plan metric, then Recall@1),
    the ranking, what tuning bought each loss, the budget, the missing runs, the warnings."""
    primary, second = headline_metrics(results)
    out = [lead_sentence(results, primary), lead_sentence(results, second)]
    ranking = ranking_sentence(results, primary)
    out += [ranking] if ranking else []
    for loss in results["losses"].values():
        sentence = tuning_sentence(loss, primary)
        out += [sentence] if sentence else []
    out.append(budget_sentence(results))
    missing = missing_sentence(results)
    out += [missing] if missing else []
    return out + warnings(results)
