"""Claiming trials: never more than N counted, a dead worker's trial freed, a database race's
surplus trial failed at once (in-memory studies, no training)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from rankedlist.tune import study as study_module
from rankedlist.tune.study import claim_trial, counted_trials, make_pruner

optuna = pytest.importorskip("optuna")


def new_study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize")


def test_no_claim_beyond_n_and_failed_trials_do_not_count():
    study = new_study()
    first = claim_trial(study, 2, None, seed=0)
    second = claim_trial(study, 2, None, seed=0)
    assert claim_trial(study, 2, None, seed=0) is None  # two running: the study is full
    study.tell(first, 0.5)
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    again = claim_trial(study, 2, None, seed=0)  # the failed one is run again
    assert again is not None and again.number == 2
    assert len(counted_trials(study)) == 2


def test_a_running_trial_of_a_dead_local_worker_is_marked_failed():
    study = new_study()
    orphan = study.ask()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.stdout.strip()}")
    elsewhere = study.ask()  # another machine's worker: left alone
    elsewhere.set_user_attr("worker", "another-host:1")
    trial = claim_trial(study, 2, None, seed=0)
    assert trial is not None
    states = {t.number: t.state for t in study.trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert states[elsewhere.number] == optuna.trial.TrialState.RUNNING
    assert study.trials[orphan.number].user_attrs["failed_because"] == "worker gone"


def test_a_database_race_past_n_fails_the_surplus_trial(monkeypatch):
    study = new_study()
    study.ask()  # another worker's trial, created between our count and our ask
    seen = []

    def counted(s):  # our count saw an empty study; later counts see the truth
        seen.append(1)
        return [] if len(seen) == 1 else counted_trials(s)

    monkeypatch.setattr(study_module, "counted_trials", counted)
    assert claim_trial(study, 1, None, seed=0) is None
    surplus = study.trials[-1]
    assert surplus.state == optuna.trial.TrialState.FAIL and surplus.user_attrs["surplus"]


def test_pruners():
    assert isinstance(make_pruner("median", 20, 10), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("halving", 20, 10), optuna.pruners.SuccessiveHalvingPruner)
    with pytest.raises(ValueError, match="--pruner 'best'"):
        make_pruner("best", 20, 10)
