"""Database storage, for real: a SQLite file, and a PostgreSQL server started for the session
(the ``postgres_url`` fixture) shared by two ``rankedlist tune`` worker processes that finish
exactly N trials between them; an unreachable database is one ``error:`` line before anything
runs."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _tune_helpers import GLYPHS, TINY, run_cli

optuna = pytest.importorskip("optuna")
WORKER = Path(__file__).with_name("_tune_worker.py")


def trained_steps(run_dir: str) -> list[int]:
    log = Path(run_dir) / "metrics.jsonl"
    return [r["step"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_a_sqlite_file_in_a_new_folder_holds_the_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'db' / 'nested' / 'study.db'}"  # folders made as needed
    out = tmp_path / "out"
    argv = ["tune", "--config", GLYPHS, "--trials", "2", "--study", "lite", "--out", str(out),
            "--storage", url, "--search-only", "--pruner", "none", *TINY,
            "train.iterations=2", "train.eval_every=2"]  # fmt: skip
    assert run_cli(argv) == 0, capsys.readouterr()
    assert f"study 'lite' in {url}" in capsys.readouterr().out
    assert (tmp_path / "db" / "nested" / "study.db").stat().st_size > 0
    assert not (out / "study.journal").exists()  # the database, not the default journal
    study = optuna.load_study(study_name="lite", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [float(r["value"]) for r in rows] == pytest.approx([t.value for t in study.trials])
    for trial in study.trials:  # each value is its run's best validation MAP@R
        log = Path(trial.user_attrs["run_dir"]) / "metrics.jsonl"
        vals = [r["val/map@r"] for r in map(json.loads, log.read_text().splitlines())
                if "val/map@r" in r]  # fmt: skip
        assert trial.value == pytest.approx(max(vals))
    assert url in (out / "best.yaml").read_text().splitlines()[0]


def worker(go: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(go), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study_and_finish_exactly_n_trials(tmp_path, postgres_url):
    go, out = tmp_path / "go", tmp_path / "out"
    argv = ["--config", GLYPHS, "--trials", "4", "--study", "pg", "--out", str(out),
            "--storage", postgres_url, "--search-only", *TINY, "train.iterations=4",
            "train.eval_every=2"]  # fmt: skip
    procs = [worker(go, *argv) for _ in range(2)]
    for proc in procs:
        line = proc.stdout.readline()
        assert line.strip() == "ready", line + proc.stdout.read()
    go.touch()  # both open the fresh database and claim trials from the same moment on
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    study = optuna.load_study(study_name="pg", storage=postgres_url)
    state = optuna.trial.TrialState
    finished = [t for t in study.trials if t.state in (state.COMPLETE, state.PRUNED)]
    assert len(finished) == 4
    others = [t for t in study.trials if t not in finished]
    assert all(t.state == state.FAIL and t.user_attrs.get("surplus") for t in others)
    assert all(not Path(t.user_attrs.get("run_dir", out / "none")).exists() for t in others)
    assert len({t.number for t in finished}) == 4
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both took trials
    run_dirs = sorted(t.user_attrs["run_dir"] for t in finished)
    assert len(set(run_dirs)) == 4
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(
        Path(d).name for d in run_dirs
    )  # no other trial trained
    for trial in finished:  # every iteration once: no trial trained twice
        assert trained_steps(trial.user_attrs["run_dir"]) == list(
            range(1, trial.user_attrs["iteration"] + 1)
        ), trial.number
    assert (out / "best.yaml").is_file()
    assert "postgresql+psycopg2://postgres@127.0.0.1" in (out / "report.md").read_text()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql+psycopg2://postgres:s3cret@127.0.0.1:{port}/postgres",
            "error: --storage postgresql+psycopg2://postgres:***@127.0.0.1:{port}/postgres: "
            'cannot open the database (connection to server at "127.0.0.1", port {port} failed: '
            "Connection refused",
        ),
        (
            "postgres://postgres:s3cret@127.0.0.1:{port}/postgres",
            "postgres:// is not a SQLAlchemy dialect: write postgresql+psycopg2://",
        ),
    ],
)
def test_an_unreachable_database_is_one_error_line_before_anything_runs(
    tmp_path, capsys, url, message
):
    port = closed_port()
    out = tmp_path / "out"
    argv = ["tune", "--config", GLYPHS, "--trials", "2", "--out", str(out),
            "--storage", url.format(port=port), *TINY, "train.iterations=2"]  # fmt: skip
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --storage "), err
    assert message.format(port=port) in err[0]
    assert "s3cret" not in captured.err + captured.out  # the password is never printed
    assert "tune:" not in captured.out  # nothing ran, nothing was announced
    assert not out.exists()
