"""What ``rankedlist tune`` writes for people: ``trials.csv``, ``report.md`` and its pictures.

Pictures (PNG, Agg, no pyplot): ``history.png`` (the objective of every trial and the best so
far), ``curves.png`` (each trial's validation values as it trained; pruned trials dashed) and
``importances.png`` (fANOVA parameter importances over the complete trials).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from rankedlist.atomic_write import atomic_write_text
from rankedlist.report.figures import new_figure, save_png, style_axes
from rankedlist.tune.study import optuna_module

__all__ = ["importances", "trial_rows", "write_report", "write_trials_csv"]

_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
_TEST_COLUMNS = [("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"),
                 ("recall@8", "R@8"), ("r_precision", "R-Precision"), ("map@r", "MAP@R"),
                 ("nmi", "NMI")]  # fmt: skip


def trial_rows(study: Any, param_names: list[str]) -> list[dict[str, Any]]:
    """One flat row per trial of the study (all workers'), by trial number."""
    rows = []
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    folds = any("fold_values" in t.user_attrs or "fold_run_dirs" in t.user_attrs for t in trials)
    for t in trials:
        state = _STATES.get(t.state.name, t.state.name.lower())
        if t.user_attrs.get("surplus"):
            state = "surplus"
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        note = t.user_attrs.get("note") or t.user_attrs.get("error") or ""
        if t.user_attrs.get("failed_because"):
            note = f"failed: {t.user_attrs['failed_because']}"
        if "retry_of" in t.user_attrs:
            note = (note + f"; re-run of trial {t.user_attrs['retry_of']}").lstrip("; ")
        rows.append(
            {
                "number": t.number,
                "state": state,
                "value": t.value,
                "iteration": t.user_attrs.get("iteration", t.last_step),
                "best_iteration": t.user_attrs.get("best_iteration"),
                "seconds": None if seconds is None else round(seconds, 1),
                **{f"param_{n}": t.params.get(n) for n in param_names},
                **(
                    {
                        "fold_values": " ".join(
                            f"{v:.6g}" for v in t.user_attrs.get("fold_values", [])
                        )
                    }
                    if folds
                    else {}
                ),
                "overrides": " ".join(t.user_attrs.get("overrides", [])),
                "run_dir": t.user_attrs.get("run_dir", ""),
                "worker": t.user_attrs.get("worker", ""),
                "note": note,
            }
        )
    return rows


def write_trials_csv(study: Any, setup: Any, path: Path) -> Path:
    rows = trial_rows(study, list(setup.space.params))
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["number", "state", "value"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def importances(study: Any, seed: int = 0) -> tuple[dict[str, float], str]:
    """fANOVA importances of the complete trials, or ({}, why not)."""
    optuna = optuna_module()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"needs at least 2 complete trials ({len(complete)} here)"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), ""
    except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as exc:
        return {}, " ".join(str(exc).split())[:200] or type(exc).__name__


def write_report(
    study: Any, setup: Any, best: Any, final: dict[str, Any], out: Path
) -> dict[str, Path]:
    """Write ``report.md`` and its pictures into ``out``; returns name -> path."""
    rows = trial_rows(study, list(setup.space.params))
    files: dict[str, Path] = {}
    for name, draw in (("history", _history), ("curves", _curves)):
        path = draw(study, best, setup.metric, out / f"{name}.png")
        if path is not None:
            files[name] = path
    scores, why = importances(study, setup.options.seed)
    if scores:
        files["importances"] = _importances_png(scores, out / "importances.png")
    text = _markdown(setup, best, final, rows, scores, why, files)
    files["report"] = atomic_write_text(out / "report.md", text)
    return files


# --------------------------------------------------------------------------- markdown


def _markdown(setup, best, final, rows, scores, why, files) -> str:
    s, r = setup.search, setup.recipe
    counts = {k: sum(row["state"] == k for row in rows) for k in ("complete", "pruned", "failed")}
    seconds = [row["seconds"] for row in rows if row["seconds"] is not None]
    lines = [
        f"# Tuning report: study `{setup.name}`",
        "",
        f"{r.loss.name} on {r.data.dataset} ({r.model.name}), {setup.n_trials} trials of up to "
        f"{s.train.iterations} iterations each, sampler TPE (seed {setup.options.seed}), pruner "
        f"{setup.options.pruner}, storage `{setup.storage_name}`.",
        "",
        _objective_text(setup),
        "",
        f"Trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} "
        f"failed (not counted; their values re-run); {sum(seconds):.0f} s of trial time in all.",
        "",
        "## Search space",
        "",
        f"From {setup.space.source}.",
        "",
        "| parameter | sets | range |",
        "|---|---|---|",
    ]
    for name, text in setup.space.describe().items():
        target, _, rng = text.partition(": ")
        lines.append(f"| `{name}` | {target} | {rng} |")
    shared = getattr(setup.space, "shared", ())
    if shared:
        names = ", ".join(f"`{n}`" for n in shared)
        lines.append(
            f"\n{names}: searched by every loss with the same spec (the shared dimensions)."
        )
    lines += [*(f"\n{note}." for note in setup.space.notes), "", "## Best configuration", ""]
    where = f"at iteration {best.user_attrs.get('best_iteration')}"
    if "fold_values" in best.user_attrs:
        where = "the mean of the folds' " + ", ".join(
            f"{v:.4f}" for v in best.user_attrs["fold_values"]
        )
    lines += [
        f"Trial {best.number}: val {setup.metric} **{best.value:.4f}** {where}; overrides: "
        f"`{' '.join(best.user_attrs.get('overrides', []))}`.",
        "",
        "`best.yaml` is the complete recipe (run it with `rankedlist train --config "
        f"{final['best_yaml']}`).",
        "",
        "## Test metrics",
        "",
    ]
    if final.get("test"):
        test = final["test"]
        lines += [
            final["how"],
            "",
            "| " + " | ".join(h for _, h in _TEST_COLUMNS) + " |",
            "|" + "---:|" * len(_TEST_COLUMNS),
            "| " + " | ".join(_pct(test.get(k)) for k, _ in _TEST_COLUMNS) + " |",
            "",
            "(percent, the test split evaluated once.)",
        ]
    else:
        lines.append(final["how"])
    lines += ["", "## Optimisation history", ""]
    lines += [f"![optimisation history]({files['history'].name})"] if "history" in files else []
    lines += ["", f"Validation {setup.metric} of each trial as it trained (pruned trials dashed):"]
    lines += ["", f"![validation curves]({files['curves'].name})"] if "curves" in files else []
    lines += ["", "## Parameter importances", ""]
    if scores:
        lines += [f"![parameter importances]({files['importances'].name})", ""]
        lines += ["| parameter | importance (fANOVA) |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in scores.items()]
    else:
        lines.append(f"Not available: {why}.")
    lines += ["", "## Trials", "", "Also in `trials.csv`.", ""]
    params = list(setup.space.params)
    lines += ["| # | state | value | iterations | " + " | ".join(params) + " | s | note |"]
    lines += ["|---:|---|---:|---:|" + "---:|" * len(params) + "---:|---|"]
    for row in rows:
        cells = [str(row["number"]), row["state"], _num(row["value"]), _num(row["iteration"])]
        cells += [_num(row[f"param_{p}"]) for p in params]
        cells += [_num(row["seconds"]), str(row["note"]).replace("|", "/")[:80]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _objective_text(setup: Any) -> str:
    fraction, metric = setup.search.data.val_fraction, setup.metric
    folds = getattr(setup.options, "folds", 1)
    if folds > 1:
        how = (
            f"the mean over {folds} validation folds (`--folds`) of each fold's best validation) "
            f"on {folds} class-disjoint splits of {fraction:g} of the training classes each "
            f"(`data.val_fraction`, `data.options.val_fold` 0 to {folds - 1})"
        )
    else:
        how = (
            "the best validation of each trial) on a class-disjoint split of "
            f"{fraction:g} of the training classes (`data.val_fraction`)"
        )
    return (
        f"**Objective**: the validation {metric} (maximised; {how}. The test split was not read "
        "during the search."
    )


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}"


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


# --------------------------------------------------------------------------- pictures


def _history(study: Any, best: Any, metric: str, path: Path) -> Path | None:
    state = optuna_module().trial.TrialState
    points = [(t.number, t.value, t.state) for t in study.get_trials(deepcopy=False)]
    points = [p for p in points if p[1] is not None and p[2] in (state.COMPLETE, state.PRUNED)]
    if not points:
        return None
    points.sort()
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    style_axes(ax)
    done = [(n, v) for n, v, s in points if s == state.COMPLETE]
    pruned = [(n, v) for n, v, s in points if s == state.PRUNED]
    if done:
        ax.scatter(*zip(*done, strict=True), color="#1f77b4", label="complete", zorder=3)
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), color="#999999", marker="x", label="pruned")
    best_so_far, xs, ys = -math.inf, [], []
    for n, v in done:
        best_so_far = max(best_so_far, v)
        xs.append(n)
        ys.append(best_so_far)
    if xs:
        ax.step(xs, ys, where="post", color="#d62728", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {metric}")
    ax.set_title("Optimisation history")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def _curves(study: Any, best: Any, metric: str, path: Path) -> Path | None:
    state = optuna_module().trial.TrialState
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    style_axes(ax)
    for t in sorted(trials, key=lambda t: t.number == best.number):
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        if t.number == best.number:
            ax.plot(steps, values, color="#d62728", lw=2, label=f"best (trial {t.number})")
        elif t.state == state.PRUNED:
            ax.plot(steps, values, color="#999999", lw=1, ls="--")
        else:
            ax.plot(steps, values, color="#1f77b4", lw=1, alpha=0.6)
    folds = any("fold_values" in t.user_attrs for t in trials)
    ax.set_xlabel("iteration (the folds one after another)" if folds else "iteration")
    ax.set_ylabel(f"val {metric}")
    ax.set_title("Validation during training")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def _importances_png(scores: dict[str, float], path: Path) -> Path:
    names = list(scores)[::-1]
    fig = new_figure(5.6, 0.5 + 0.4 * len(names))
    ax = fig.add_subplot()
    style_axes(ax)
    ax.barh(names, [scores[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("Parameter importances")
    return save_png(fig, path)
