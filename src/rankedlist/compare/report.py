"""What ``rankedlist compare`` writes for people, from its results dict: tables, pictures, report.

:func:`write_compare_report` writes ``table.md``, ``comparison.png``, ``validation_curves.png``
and ``report.md`` into a folder; :func:`validate_results` checks the dict first and raises
``ValueError`` naming the first missing key. The orchestrator writes exactly this dict into
``results.json``::

    {
      "rankedlist_version": str,
      "versions": {"torch": str, "optuna": str, ...},
      "plan": {"recipes": [str], "trials": int, "seeds": [int], "folds": int,
               "metric": "map@r",          # optional, default map@r: the primary metric
               "overrides": [str], "iterations": int, "pruner": "median",
               "sampler_seed": int, "dataset": str, "protocol": str},
      "test_reads": int,     # times the test split has been read, all runs of this comparison
      "losses": {            # keyed by recipe name, in plan order, one per plan recipe
        "<recipe>": {
          "loss": "rll", "label": "RLL",          # loss.name and display name
          "space": {"<dim>": {"low": float, "high": float, "log": bool, "shared": bool}
                           | {"choices": [...], "shared": bool}, ...},
          "trials": [{"number": int, "state": "COMPLETE" | "PRUNED" | "FAIL",
                      "value": float | null, "params": {...}, "pruned_at": int | null,
                      "curve": [[iteration, value], ...]}],
          "best": {"trial": int, "value": float, "params": {...}} | null,
          "tuned": {"<seed>": {"recall@1": float, "map@r": float, "nmi": float, ...}},
          "untuned": {"<seed>": {...}}            # test metrics as fractions 0-1
        }
      }
    }

A seed whose run has not finished is simply absent from ``tuned`` / ``untuned`` (a comparison in
progress can be reported; the report names the missing runs). A space dimension may also carry
``step`` and ``type``. Everything printed is percent with one decimal: ``mean ± std`` over the
seeds (sample std) and the 95% Student-t interval of the mean (none for a single seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankedlist.atomic_write import atomic_write_text
from rankedlist.compare.figures import plot_comparison, plot_validation_curves
from rankedlist.compare.sentences import expected_test_reads, summary_sentences
from rankedlist.compare.statistics import (
    CONFIDENCE,
    VARIANTS,
    metric_keys,
    metric_name,
    summary_of,
)
from rankedlist.report.markdown import MISSING, markdown_table

__all__ = ["results_table", "validate_results", "write_compare_report"]

_TOP_KEYS = ("rankedlist_version", "versions", "plan", "test_reads", "losses")
_PLAN_KEYS = ("recipes", "trials", "seeds", "folds", "overrides", "iterations", "pruner",
              "sampler_seed", "dataset", "protocol")  # fmt: skip
_LOSS_KEYS = ("loss", "label", "space", "trials", "best", "tuned", "untuned")
_TRIAL_KEYS = ("number", "state", "value", "params", "pruned_at", "curve")
_BEST_KEYS = ("trial", "value", "params")


# --------------------------------------------------------------------------- validation


def _require(mapping: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"results: {where or 'the results'} must be a mapping, not {mapping!r}")
    for key in keys:
        if key not in mapping:
            raise ValueError(f"results are missing the key {where + '.' if where else ''}{key}")


def _validate_loss(loss: Any, where: str) -> None:
    _require(loss, _LOSS_KEYS, where)
    _require(loss["space"], (), f"{where}.space")
    for dim, spec in loss["space"].items():
        keys = ("shared", "choices") if isinstance(spec, Mapping) and "choices" in spec else None
        _require(spec, keys or ("shared", "low", "high"), f"{where}.space.{dim}")
    if not isinstance(loss["trials"], list):
        raise ValueError(f"results: {where}.trials must be a list")
    for i, trial in enumerate(loss["trials"]):
        _require(trial, _TRIAL_KEYS, f"{where}.trials[{i}]")
    if loss["best"] is not None:
        _require(loss["best"], _BEST_KEYS, f"{where}.best")
    for variant in VARIANTS:
        _require(loss[variant], (), f"{where}.{variant}")
        for seed, metrics in loss[variant].items():
            _require(metrics, (), f"{where}.{variant}.{seed}")


def validate_results(results: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first key of the schema (module docstring) that
    ``results`` lacks, e.g. ``plan.seeds`` or ``losses.rll.trials[0].state``."""
    _require(results, _TOP_KEYS, "")
    _require(results["plan"], _PLAN_KEYS, "plan")
    _require(results["losses"], (), "losses")
    recipes = list(results["plan"]["recipes"])
    for recipe in recipes:
        if recipe not in results["losses"]:
            raise ValueError(f"results are missing the key losses.{recipe} (a plan recipe)")
    for recipe, loss in results["losses"].items():
        if recipe not in recipes:
            raise ValueError(f"results: losses.{recipe} is not one of plan.recipes {recipes}")
        _validate_loss(loss, f"losses.{recipe}")


# --------------------------------------------------------------------------- table


def _cells(loss: Mapping[str, Any], variant: str, metric: str) -> list[str]:
    """``mean ± std`` and ``[low, high]`` of one run on one metric (percent)."""
    s = summary_of(loss, variant, metric)
    if s is None:
        return [MISSING, MISSING]
    if not s.has_interval:
        return [f"{s.mean:.1f}", "n/a (1 seed)"]
    return [f"{s.mean:.1f} ± {s.std:.1f}", f"[{s.low:.1f}, {s.high:.1f}]"]


def results_table(results: Mapping[str, Any]) -> str:
    """One row per loss and run (tuned, untuned): every metric as ``mean ± std`` and its 95%
    interval, in percent, and the seeds that finished."""
    metrics = metric_keys(results)
    headers = ["loss", "recipe", "run", "seeds"]
    for metric in metrics:
        headers += [metric_name(metric), f"{metric_name(metric)} 95% CI"]
    rows = []
    for recipe, loss in results["losses"].items():
        for variant in VARIANTS:
            row = [str(loss["label"]), f"`{recipe}`", variant, str(len(loss[variant]))]
            for metric in metrics:
                row += _cells(loss, variant, metric)
            rows.append(row)
    return markdown_table(headers, rows, ["l", "l", "l"] + ["r"] * (len(headers) - 3))


def _table_note(results: Mapping[str, Any]) -> str:
    n = len(results["plan"]["seeds"])
    return (
        f"Test metrics in percent: mean ± std over the seeds (sample std; {n} planned), and the "
        f"{CONFIDENCE:.0%} interval of the mean (Student t, n - 1 degrees of freedom; none for a "
        "single seed). *tuned*: the best searched configuration, trained on all training classes; "
        "*untuned*: the recipe as shipped, at the same budget and seeds."
    )


# --------------------------------------------------------------------------- report.md


def _num(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _range_text(spec: Mapping[str, Any]) -> str:
    if "choices" in spec:
        return "one of " + ", ".join(_num(c) for c in spec["choices"])
    text = f"[{_num(spec['low'])}, {_num(spec['high'])}]"
    text += f" step {_num(spec['step'])}" if spec.get("step") else ""
    return text + (f" ({spec['type']})" if spec.get("type") else "")


def _space_section(results: Mapping[str, Any]) -> list[str]:
    lines = ["## Search spaces", "", "*shared*: the same dimension and range for every loss."]
    for recipe, loss in results["losses"].items():
        lines += ["", f"### {loss['label']} (`{recipe}`, loss `{loss['loss']}`)", ""]
        rows = [
            [
                f"`{dim}`",
                _range_text(spec),
                MISSING if "choices" in spec else ("yes" if spec.get("log") else "no"),
                "shared" if spec["shared"] else "this loss only",
            ]
            for dim, spec in loss["space"].items()
        ]
        headers = ["dimension", "range / choices", "log", "shared"]
        lines.append(markdown_table(headers, rows, ["l"] * 4) if rows else "No dimensions.")
    return lines


def _trials_section(results: Mapping[str, Any]) -> list[str]:
    lines = ["## Trials"]
    for loss in results["losses"].values():
        trials, best = loss["trials"], loss["best"]
        counts = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        line = (
            f"{len(trials)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
            f"{counts['FAIL']} failed; "
        )
        line += f"best: trial {best['trial']} ({_num(best['value'])})." if best else "no best."
        rows = [
            [
                str(t["number"]),
                str(t["state"]).lower(),
                _num(t["value"]),
                _num(t["pruned_at"]),
                ", ".join(f"{k}={_num(v)}" for k, v in t["params"].items()),
            ]
            for t in trials
        ]
        headers = ["#", "state", "value", "pruned at", "params"]
        table = markdown_table(headers, rows, ["r", "l", "r", "r", "l"])
        lines += ["", f"### {loss['label']}", "", line, "", table if rows else "No trials yet."]
    return lines


def _budget_section(results: Mapping[str, Any]) -> list[str]:
    plan = results["plan"]
    overrides = " ".join(plan["overrides"])
    versions = {"rankedlist": results["rankedlist_version"], **results["versions"]}
    folds = f"{plan['folds']} validation fold" + ("" if plan["folds"] == 1 else "s")
    return [
        "## Plan",
        "",
        f"- recipes: {', '.join(f'`{r}`' for r in plan['recipes'])}",
        f"- search: {plan['trials']} trials × {plan['iterations']} iterations per trial, "
        f"{folds}, pruner {plan['pruner']}, sampler seed {plan['sampler_seed']}, objective "
        f"validation {plan.get('metric') or 'map@r'}",
        f"- seeds: {', '.join(map(str, plan['seeds']))}",
        f"- dataset: {plan['dataset']} ({plan['protocol']} protocol)",
        f"- overrides: `{overrides}`" if overrides else "- overrides: none",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]


def _pictures(files: Mapping[str, Path]) -> list[str]:
    lines = ["## Pictures", ""]
    if "comparison" in files:
        lines += [f"![test metrics per seed]({files['comparison'].name})", ""]
    else:
        lines += ["No comparison picture: no seed run has finished yet.", ""]
    lines += ["How fast each loss learns: the validation curve of its best trial.", ""]
    if "validation_curves" in files:
        return lines + [f"![validation curves]({files['validation_curves'].name})"]
    return lines + ["No validation curves: no loss has a best trial with a curve yet."]


def _markdown(results: Mapping[str, Any], files: Mapping[str, Path]) -> str:
    labels = ", ".join(str(loss["label"]) for loss in results["losses"].values())
    reads, expected = results["test_reads"], expected_test_reads(results)
    lines = [f"# Loss comparison on {results['plan']['dataset']}: {labels}", ""]
    for sentence in summary_sentences(results):
        lines += [sentence, ""]
    lines += ["## Test results", "", _table_note(results), "", results_table(results), ""]
    lines += [*_pictures(files), "", *_budget_section(results), "", *_space_section(results)]
    lines += ["", *_trials_section(results), "", "## Test split", ""]
    lines.append(
        f"The test split was read {reads} times in all runs of this comparison (the finished "
        f"plan needs {expected}: tuned and untuned, once per seed, for each loss); the searches "
        "read only the validation classes."
    )
    return "\n".join(lines) + "\n"


def write_compare_report(results: dict, out: Path) -> dict[str, Path]:
    """Write ``table.md``, ``comparison.png``, ``validation_curves.png`` and ``report.md`` into
    ``out`` (atomically, each) from the results dict of the module docstring; returns name ->
    path (a picture with nothing to draw is left out, and the report says so)."""
    validate_results(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    table = f"{_table_note(results)}\n\n{results_table(results)}\n"
    files["table"] = atomic_write_text(out / "table.md", table)
    pictures = (("comparison", plot_comparison), ("validation_curves", plot_validation_curves))
    for name, draw in pictures:
        path = draw(results, out / f"{name}.png")
        if path is not None:
            files[name] = path
    files["report"] = atomic_write_text(out / "report.md", _markdown(results, files))
    return files
