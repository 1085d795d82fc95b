"""``run_comparison(plan)``: the searches, the final runs, ``results.json`` and the report.

1. :func:`~rankedlist.compare.checks.resolve_plan` checks the plan (nothing has run yet);
2. the studies: one per loss (``compare-<OUT's name>-<recipe>``, so comparisons with other
   ``--out`` folders can share one database) in one storage (``OUT/studies.journal`` or
   ``--storage URL``), each recording the fairness contract in its user attribute
   ``rankedlist_compare`` (trials, iterations, pruner, sampler seed, metric, folds, the shared
   dimensions). A study whose loss has tuned final runs takes no other number of trials: their
   best configuration was tested already (use a new ``--out``);
3. each search: ``rankedlist tune --search-only`` with the same trials, iterations, sampler seed
   and pruner for every loss (``OUT/search/<recipe>/``, its ``best.yaml``);
4. the final runs (:mod:`rankedlist.compare.finals`): tuned and untuned, once per seed, each
   tested once; the untuned ones need no search and run while others search;
5. ``OUT/results.json`` (:mod:`rankedlist.compare.results`), then the report
   (``rankedlist.compare.report.write_compare_report``).

Several processes with the same ``--out`` (and ``--storage``) share the work: the studies'
trials are claimed (exactly N per study), a final run is taken by one process (its lock), and a
process with nothing left to take waits for the others' runs (or takes a run whose process died).
SIGINT/SIGTERM stop at a safe point (:class:`~rankedlist.compare.finals.CompareInterrupted`);
the same command again continues, and reads the test split only for the runs not done yet.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rankedlist.atomic_write import atomic_write_text
from rankedlist.compare.checks import LossPlan, Resolved, describe_space, resolve_plan, shared_names
from rankedlist.compare.finals import (
    KINDS,
    TEST_READS,
    CompareInterrupted,
    FinalRun,
    TestReads,
    check_done,
    visit,
)
from rankedlist.compare.plan import ComparePlan, parse_plan
from rankedlist.tune.study import held

__all__ = ["ATTR", "run_comparison"]

#: The study attribute recording what every study of a comparison shares.
ATTR = "rankedlist_compare"
#: Seconds between two looks at the work of other processes.
POLL = 0.5


def run_comparison(plan: ComparePlan | Mapping[str, Any]) -> dict[str, Any]:
    """Run (or join, or continue) the comparison of ``plan``; return the ``results.json`` dict.

    ``plan``: a :class:`~rankedlist.compare.plan.ComparePlan`, or a mapping of the plan file's
    keys (``{"recipes": ["glyphs", "glyphs_ms"], "trials": 8, "seeds": [0, 1, 2], ...}``).

    Raises:
        ValueError: a bad plan (before anything runs), or a study or run that belongs to
            another plan.
        CompareInterrupted: SIGINT/SIGTERM (everything done so far is kept).
    """
    from rankedlist.tune.trials import SignalGuard

    if not isinstance(plan, ComparePlan):
        plan = parse_plan(plan)
    with SignalGuard().installed() as guard:  # a signal waits for a safe point (see work)
        resolved = resolve_plan(plan)
        for run in final_runs(resolved):  # a tested run of another configuration: refused now
            check_done(run)
        _stop_if_signalled(guard)
        open_studies(resolved)
        reads = TestReads(plan.out / TEST_READS)
        _say(_plan_text(resolved))
        work(resolved, guard, reads)
        with _exclusive(plan.out / ".results.lock"):  # one writer of the results at a time
            from rankedlist.compare.results import build_results

            results = build_results(resolved, reads.total())
            path = atomic_write_text(plan.out / "results.json", json.dumps(results, indent=2))
            files = write_report(results, plan.out)
    _summary(resolved, reads, path, files)
    return results


def _plan_text(resolved: Resolved) -> str:
    p = resolved.plan
    return (
        f"{len(resolved.losses)} losses ({', '.join(x.key for x in resolved.losses)}) on "
        f"{resolved.dataset}: {p.trials} trials of {resolved.iterations} iterations each (val "
        f"{p.metric}, {p.pruner} pruner, sampler seed {p.sampler_seed}), then tuned and untuned "
        f"with seeds {', '.join(map(str, p.seeds))}; shared dimensions "
        f"{', '.join(shared_names(resolved.losses[0])) or 'none'}; studies in "
        f"{resolved.storage_name}"
    )


def final_runs(resolved: Resolved) -> list[FinalRun]:
    """Every final run of the plan, loss by loss: untuned first (they need no search)."""
    out = resolved.plan.out
    return [
        FinalRun(loss, kind, seed, out)
        for loss in resolved.losses
        for kind in reversed(KINDS)
        for seed in resolved.plan.seeds
    ]


# --------------------------------------------------------------------------- the studies


def open_studies(resolved: Resolved) -> None:
    """Create or join every study and record the contract; refuse one that belongs to another
    plan or would search more after its tuned runs."""
    from rankedlist.tune.study import optuna_module

    optuna = optuna_module()
    storage, lock = resolved.optuna_storage, resolved.claim_lock
    wanted = {loss.key: contract(resolved, loss) for loss in resolved.losses}
    existing = {loss.key: _load(optuna, loss.study, storage) for loss in resolved.losses}
    for loss in resolved.losses:  # every check first: a refusal changes nothing
        _check_study(resolved, loss, existing[loss.key], wanted[loss.key])
    for loss in resolved.losses:
        with held(lock):
            study = optuna.create_study(
                study_name=loss.study, storage=storage, direction="maximize", load_if_exists=True
            )
            if study.user_attrs.get(ATTR) != wanted[loss.key]:
                study.set_user_attr(ATTR, wanted[loss.key])
    return storage


def contract(resolved: Resolved, loss: LossPlan) -> dict[str, Any]:
    """What every study of the comparison shares (recorded as the study's ``ATTR``)."""
    p = resolved.plan
    space = describe_space(loss)
    return {
        "trials": p.trials,
        "iterations": resolved.iterations,
        "eval_every": loss.setup.search.train.eval_every,
        "pruner": p.pruner,
        "sampler_seed": p.sampler_seed,
        "metric": p.metric,
        "folds": p.folds,
        "shared": {name: space[name] for name in shared_names(loss)},
    }


def _load(optuna: Any, name: str, storage: Any) -> Any | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _check_study(resolved: Resolved, loss: LossPlan, study: Any, wanted: dict[str, Any]) -> None:
    from rankedlist.tune.study import counted_trials

    out, n = resolved.plan.out, resolved.plan.trials
    record = study.user_attrs.get(ATTR) if study is not None else None
    if record is not None:
        for key, value in wanted.items():
            if key != "trials" and record.get(key) != value:
                raise ValueError(
                    f"study {loss.study!r} in {resolved.storage_name} belongs to a comparison with "
                    f"{key} {record.get(key)!r}, not {value!r}: every loss of a comparison shares "
                    f"it; run the same plan again, or this plan with a new --out and --storage"
                )
    tuned = out / "runs" / loss.key / "tuned"
    started = sorted(tuned.glob("seed*/config.yaml"))
    have = len(counted_trials(study)) if study is not None else 0
    if started and (record is None or record.get("trials") != n or have > n):
        searched = record.get("trials") if record else "unknown"
        raise ValueError(
            f"{tuned}: {loss.key} has tuned final runs of the best of its {searched} trials "
            f"(study {loss.study!r} in {resolved.storage_name}); --trials {n} would search "
            "again and test a new best on the same test split, which a comparison reads once "
            "per loss, kind and seed: run this plan with a new --out (more --seeds are fine)"
        )
    if have > n:
        raise ValueError(
            f"study {loss.study!r} in {resolved.storage_name} holds {have} trials already; "
            f"--trials {n} is fewer: use --trials {have} or more, or a new --out and --storage"
        )


# --------------------------------------------------------------------------- the work


def work(resolved: Resolved, guard: Any, reads: TestReads) -> None:
    """Search every loss and make every final run done, sharing both with other processes."""
    searched: set[str] = set()
    pending = final_runs(resolved)
    waiting_said = False
    while True:
        _stop_if_signalled(guard)
        progressed = False
        for loss in resolved.losses:
            if loss.key not in searched and search(loss, resolved):
                searched.add(loss.key)
                progressed = True
        for run in list(pending):
            if run.kind == "tuned" and run.loss.key not in searched:
                continue
            _stop_if_signalled(guard)
            if visit(run, guard, reads) != "busy":
                pending.remove(run)
                progressed = True
        if not pending and len(searched) == len(resolved.losses):
            return
        if not progressed:
            if not waiting_said:
                left = [x.key for x in resolved.losses if x.key not in searched]
                _say(
                    f"waiting for other processes: {len(pending)} final runs"
                    + (f" and the searches of {', '.join(left)}" if left else "")
                    + " in progress elsewhere"
                )
                waiting_said = True
            time.sleep(POLL)


def search(loss: LossPlan, resolved: Resolved) -> bool:
    """Run the search of ``loss`` as far as this process can; True once its best is known."""
    from rankedlist.tune.search import tune

    if search_state(loss, resolved) == "waiting":
        return False
    result = tune(loss.options)
    if result.status == "interrupted":
        raise CompareInterrupted(int(result.signal or 2))
    return result.status == "done" and (loss.search_out / "best.yaml").is_file()


def search_state(loss: LossPlan, resolved: Resolved) -> str:
    """``"claim"`` (trials left to claim), ``"complete"`` (N trials finished) or ``"waiting"``
    (the last trials run in other processes). A running trial of a dead process of this machine
    is marked failed first (its trial is claimed again)."""
    from rankedlist.tune.study import counted_trials, fail_stale_trials, optuna_module

    optuna = optuna_module()
    study = optuna.load_study(study_name=loss.study, storage=resolved.optuna_storage)
    fail_stale_trials(study)
    counted = counted_trials(study)
    state = optuna.trial.TrialState
    running = sum(t.state == state.RUNNING for t in counted)
    if len(counted) < resolved.plan.trials:
        return "claim"
    return "waiting" if running else "complete"


def _stop_if_signalled(guard: Any) -> None:
    if guard.signum is not None:
        raise CompareInterrupted(int(guard.signum))


# --------------------------------------------------------------------------- the end


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """``write_compare_report(results, out)``; nothing while that module is not installed."""
    try:
        from rankedlist.compare.report import write_compare_report
    except ModuleNotFoundError as exc:
        if exc.name != "rankedlist.compare.report":
            raise
        _say("report not written: rankedlist.compare.report is not installed")
        return {}
    return dict(write_compare_report(results, out))


def _summary(resolved: Resolved, reads: TestReads, path: Path, files: dict[str, Path]) -> None:
    total = reads.total()
    runs = len(resolved.losses) * len(KINDS) * len(resolved.plan.seeds)
    _say(
        f"done: {runs} final runs; the test split was read {total} times in all for this "
        f"comparison ({reads.by_me} by this command; {len(reads.reused)} done runs reused, not "
        f"re-tested; log: {reads.path})"
    )
    _say(f"results: {path}")
    for name, file in files.items():
        _say(f"{name}: {file}")
    _say(f"runs: {resolved.plan.out / 'runs'}; searches: {resolved.plan.out / 'search'}")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """A blocking exclusive lock on ``path`` (released if the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _say(message: str) -> None:
    print(f"compare: {message}", flush=True)
