"""The end of a study: the best configuration trained once more, tested once, and reported.

The best trial's checkpoint is **not** reused: trials train on the training classes minus the
validation classes, so the best configuration is trained again on the recipe's own split (all
the training classes unless the recipe itself holds out a validation split) into
``<out>/final/``, and the test split is evaluated once there. ``<out>/best.yaml`` is that recipe
with ``train.run_dir: <out>/best`` (``rankedlist train --config best.yaml`` trains it again).

One worker finishes: an exclusive lock on ``<out>/.finish.lock`` (released if the process
dies; not ``.final.lock``, which is the lock of the ``final`` run folder itself); another worker
that gets there meanwhile leaves. An interrupted final run resumes from its ``last.pt`` when the
same command runs again.

The test split of a study is read once. Once the final run is tested, the study records it (the
user attribute ``rankedlist_tune_tested``: its N, the tested trial, the test metrics) beside
``<out>/final/metrics.json``; from then on the same command (the same N) reuses those metrics,
and any other ``--trials`` is refused up front (:func:`refuse_a_second_test`): more trials would
pick a best with the test results in view and test it on the same split again. A study stopped
before its final test (interrupted, or ``--search-only``) may still grow.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rankedlist.atomic_write import atomic_write_text
from rankedlist.training.config import apply_overrides
from rankedlist.training.config_schema import Config
from rankedlist.tune.report import write_report, write_trials_csv

__all__ = ["TESTED_ATTR", "best_config", "finish", "refuse_a_second_test"]

#: The study attribute that records the final test: {n_trials, trial, metrics, test, how}.
TESTED_ATTR = "rankedlist_tune_tested"


def refuse_a_second_test(study: Any, setup: Any) -> None:
    """Raise ``ValueError`` unless ``setup``'s ``--trials`` may run on ``study``: a study tested
    already takes exactly its N again (nothing runs); an ``--out`` holding a tested final run
    the study has no record of (one finished before the record existed) takes no more trials."""
    from rankedlist.tune.study import counted_trials

    record = study.user_attrs.get(TESTED_ATTR)
    n, name, out = setup.n_trials, setup.name, setup.out
    fix = (
        f"to search further, start a new study with another --study name and --out (e.g. "
        f"--study {name}-2 --out {out}-2)"
    )
    if record is not None:
        tested = int(record.get("n_trials", 0))
        if n == tested:
            return
        why = (
            "asks for more trials, whose best would be tested on the same test split again"
            if n > tested
            else f"is not its number of trials ({tested})"
        )
        raise ValueError(
            f"study {name!r} was tested already: its {tested} trials were searched and the best, "
            f"trial {record.get('trial')}, tested once on the test split "
            f"({record.get('metrics')}); --trials {n} {why}. The test split of a study is read "
            f"once: {fix}; run with --trials {tested} to see this study's results again"
        )
    metrics = out / "final" / "metrics.json"
    if metrics.is_file() and len(counted_trials(study)) < n:
        raise ValueError(
            f"{metrics}: --out {out} holds a final run tested on the test split already, and "
            f"--trials {n} would search more (study {name!r} has {len(counted_trials(study))}) "
            f"and test a new best on the same test split. The test split of a study is read "
            f"once: {fix}"
        )


def best_config(setup: Any, best: Any, run_dir: Path) -> Config:
    """The recipe with the best trial's values (on the recipe's own train/val split)."""
    overrides = list(best.user_attrs.get("overrides", []))
    return apply_overrides(setup.recipe, [*overrides, f"train.run_dir={run_dir}"])


def finish(study: Any, setup: Any, result: Any, guard: Any = None) -> Any:
    """Write ``best.yaml``; unless ``search_only``, train and test it; write the report."""
    out = setup.out
    with _final_lock(out) as mine:
        if not mine:
            _say(f"another worker is finishing the study in {out}; its report will be there")
            result.status = "finishing"
            return result
        record = study.user_attrs.get(TESTED_ATTR)
        try:
            best = _tested_trial(study, record) or study.best_trial
        except ValueError:
            raise ValueError(
                f"study {setup.name!r}: none of its {result.finished} trials completed (all "
                "pruned or failed), so there is no best configuration; widen the search space "
                "or use --pruner none, and run again with a new --study name or more --trials"
            ) from None
        best_yaml = write_best_yaml(setup, best, out)
        final: dict[str, Any] = {"best_yaml": str(best_yaml)}
        if record is not None:  # tested once already: never again, --search-only or not
            _say(
                f"the final run of trial {best.number} was tested once already "
                f"({record.get('metrics')}); its test metrics are reused (not re-tested)"
            )
            final.update(test=record["test"], how=record["how"])
            result.test_metrics = dict(record["test"])
        elif setup.options.search_only:
            final["how"] = (
                "Not run (`--search-only`): run the same command without it to train the best "
                "configuration once more and evaluate the test split once."
            )
        else:
            status, signum, test, how = final_run(setup, best, out, guard)
            if status != "done":
                result.status, result.signal = status, signum
                _say(
                    f"the final run was interrupted by signal {signum}; the search is complete. "
                    "Run the same command again to finish it (it resumes from its checkpoint)"
                )
                return result
            final.update(test=test, how=how)
            result.test_metrics = test
            study.set_user_attr(
                TESTED_ATTR,
                {
                    "n_trials": setup.n_trials,
                    "trial": best.number,
                    "metrics": str(out / "final" / "metrics.json"),
                    "test": json.loads(json.dumps(test, default=float)),
                    "how": how,
                },
            )
        write_trials_csv(study, setup, out / "trials.csv")
        files = write_report(study, setup, best, final, out)
    result.status = "done"
    result.best = {
        "number": best.number,
        "value": best.value,
        "params": dict(best.params),
        "overrides": list(best.user_attrs.get("overrides", [])),
    }
    result.files = {"best": best_yaml, "trials": out / "trials.csv", **files}
    _say(
        f"best: trial {best.number}, val {setup.metric} {best.value:.4f}: "
        + " ".join(best.user_attrs.get("overrides", []))
    )
    if result.test_metrics:
        t = result.test_metrics
        _say(
            "test (once): "
            + ", ".join(f"{k} {100 * t[k]:.1f}" for k in ("recall@1", "map@r", "nmi") if k in t)
        )
    _say(f"report: {files['report']}; best recipe: {best_yaml}")
    return result


def _tested_trial(study: Any, record: dict[str, Any] | None) -> Any | None:
    """The trial whose configuration was tested (None: not tested yet)."""
    if record is None:
        return None
    number = record.get("trial")
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def write_best_yaml(setup: Any, best: Any, out: Path) -> Path:
    config = best_config(setup, best, out / "best")
    config = apply_overrides(
        config,
        [
            f"description=Tuned {setup.recipe.loss.name} (rankedlist tune, study "
            f"{setup.name}, trial {best.number} of {setup.n_trials}, val {setup.metric} "
            f"{best.value:.4f})"
        ],
    )
    from rankedlist import __version__

    header = (
        f"# written by rankedlist {__version__} tune: the best of {setup.n_trials} trials of "
        f"study {setup.name} ({setup.storage_name})\n"
        f"# trial {best.number}: {' '.join(best.user_attrs.get('overrides', []))}\n"
        "# train it: rankedlist train --config THIS_FILE\n"
    )
    text = header + yaml.safe_dump(config.to_dict(), sort_keys=False)
    return atomic_write_text(out / "best.yaml", text)


def final_run(setup: Any, best: Any, out: Path, guard: Any):
    """(status, signal, fused test metrics, how it was obtained)."""
    from rankedlist.training.signals import RunInterrupted
    from rankedlist.training.train import main as train_main
    from rankedlist.tune.trials import TuneInterrupted

    run_dir = out / "final"
    config = best_config(setup, best, run_dir)
    split = (
        f"data.val_fraction {config.data.val_fraction:g}, best.pt on val {setup.metric}"
        if config.data.val_fraction
        else "all the training classes, the validation classes included"
    )
    how = (
        f"The best configuration trained once more in `{run_dir}` ({split}; the trial's "
        "checkpoint is not reused), then the test split evaluated once"
    )
    saved = run_dir / "config.yaml"
    same = saved.is_file() and yaml.safe_load(saved.read_text()) == config.to_dict()
    metrics_file = run_dir / "metrics.json"
    if same and metrics_file.is_file():
        _say(f"the final run in {run_dir} is done; its test metrics are reused (not re-tested)")
        return "done", None, json.loads(metrics_file.read_text())["test"], how + "."
    if not same and metrics_file.is_file():  # validate before deleting: a tested run stays
        raise ValueError(
            f"{metrics_file}: {run_dir} holds a final run tested on the test split already, "
            f"with another configuration than trial {best.number}'s; it is not replaced (the "
            "test split of a study is read once): use another --out for this study"
        )
    resume = run_dir if same and (run_dir / "last.pt").is_file() else None
    _say(
        f"final run: trial {best.number}'s configuration "
        f"{'resumed' if resume else 'trained'} in {run_dir}, then the test split once"
    )
    try:
        with guard.interruptible() if guard is not None else contextlib.nullcontext():
            result = train_main(config, resume=resume, overwrite=resume is None)
    except RunInterrupted as exc:
        return "interrupted", exc.signum, {}, how
    except (TuneInterrupted, KeyboardInterrupt) as exc:
        return "interrupted", int(getattr(exc, "signum", signal.SIGINT)), {}, how
    if result.status != "completed":
        return "interrupted", result.signal or signal.SIGINT, {}, how
    test = result.test_metrics.get("fused", {})
    if not metrics_file.is_file():  # train.report=false writes it too; keep one either way
        atomic_write_text(metrics_file, json.dumps({"test": test}))
    return "done", None, test, how + f" (iteration {result.iteration})."


@contextlib.contextmanager
def _final_lock(out: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on ``out/.finish.lock``: True if this process holds it.

    Not ``out/.final.lock``: that is the folder lock (:mod:`rankedlist.folder_lock`) of the
    final run's folder ``out/final``, which the final run's training takes itself."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one machine, trust the caller
        yield True
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".finish.lock", "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"tune: {message}", flush=True)
