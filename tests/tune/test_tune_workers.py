"""Scale-out and interruption: two worker processes on one journal file finish exactly N trials
(none lost, none run twice); SIGTERM leaves the study consistent and the same command again
continues it to N."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tune_helpers import GLYPHS, TINY, load_study, run_cli

optuna = pytest.importorskip("optuna")
WORKER = Path(__file__).with_name("_tune_worker.py")
pytestmark = pytest.mark.slow  # worker processes sharing a study


def worker(go: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(go), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stdout.read()


def assert_each_trial_trained_once(trial) -> None:
    """Its folder's log has every iteration once: no trial was run twice."""
    import json

    log = Path(trial.user_attrs["run_dir"]) / "metrics.jsonl"
    steps = [r["step"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, trial.user_attrs["iteration"] + 1)), (trial.number, steps)


def test_two_workers_share_one_journal_and_finish_exactly_n_trials(tmp_path):
    go, out = tmp_path / "go", tmp_path / "out"
    argv = ["--config", GLYPHS, "--trials", "4", "--study", "shared", "--out", str(out),
            "--search-only", *TINY, "train.iterations=4", "train.eval_every=2"]  # fmt: skip
    procs = [worker(go, *argv) for _ in range(2)]
    for proc in procs:
        wait_ready(proc)
    go.touch()  # both claim trials from the same moment on
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    study = load_study(out / "study.journal", "shared")
    state = optuna.trial.TrialState
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state in (state.COMPLETE, state.PRUNED) for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both took trials
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 4
    for trial in study.trials:
        assert_each_trial_trained_once(trial)
    # The last worker to finish wrote the table and the report of all four trials.
    assert (out / "trials.csv").read_text().count("\n") == 5
    assert (out / "best.yaml").is_file() and not (out / "final").exists()  # --search-only


def test_sigterm_marks_the_running_trial_failed_and_the_same_command_continues(tmp_path):
    go, out = tmp_path / "go", tmp_path / "out"
    go.touch()
    argv = ["--config", GLYPHS, "--trials", "2", "--study", "stop", "--out", str(out),
            "--search-only", *TINY, "train.iterations=8", "train.eval_every=4"]  # fmt: skip
    proc = worker(go, *argv)
    wait_ready(proc)
    log = out / "trials" / "00000" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count('"loss"') >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # mid-trial
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "run the same command again" in output

    study = load_study(out / "study.journal", "stop")
    state = optuna.trial.TrialState
    (first, queued) = study.trials
    assert first.state == state.FAIL and "interrupted by signal" in first.user_attrs["note"]
    assert queued.state == state.WAITING  # its values queued again, to run first
    assert queued.system_attrs["fixed_params"] == first.params
    assert not (out / "trials" / "00000" / "last.pt").exists()  # nothing left half-done

    assert run_cli(["tune", *argv]) == 0  # the same command again
    study = load_study(out / "study.journal", "stop")
    states = [t.state for t in study.trials]
    assert states.count(state.FAIL) == 1 and len(states) == 3
    assert all(s in (state.COMPLETE, state.PRUNED) for s in states[1:])
    assert study.trials[1].params == first.params  # the interrupted values ran first
    assert study.trials[1].user_attrs["retry_of"] == 0
    for trial in study.trials[1:]:
        assert_each_trial_trained_once(trial)
    assert "re-run of trial 0" in (out / "trials.csv").read_text()
