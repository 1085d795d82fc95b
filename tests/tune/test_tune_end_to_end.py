"""A tiny study end to end through the command line: 3 trials of 8 iterations on glyphs, the
test split untouched during the search and opened once at the end, the outputs, and
``best.yaml`` training as a recipe."""

from __future__ import annotations

import csv
import os

import pytest
import yaml
from _tune_helpers import GLYPHS, SPLITS_LOG, TINY, load_study, register_recorded_glyphs, run_cli

from rankedlist.training.config import load_config

pytest.importorskip("optuna")
pytestmark = pytest.mark.slow  # whole studies: trials, the final run, its test

ITERATIONS = 8


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    register_recorded_glyphs()
    root = tmp_path_factory.mktemp("tune")
    log = root / "splits.log"
    out = root / "out"
    argv = [
        "tune", "--config", GLYPHS, "--trials", "3", "--study", "e2e", "--out", str(out),
        "data.dataset=glyphs_recorded", *TINY, f"train.iterations={ITERATIONS}",
        "train.eval_every=4",
    ]  # fmt: skip
    previous = os.environ.get(SPLITS_LOG)
    os.environ[SPLITS_LOG] = str(log)
    try:
        code = run_cli(argv)
    finally:
        if previous is None:
            os.environ.pop(SPLITS_LOG)
        else:
            os.environ[SPLITS_LOG] = previous
    return {"code": code, "out": out, "log": log, "argv": argv}


def test_the_study_runs_its_trials_then_tests_the_best_once(study):
    out = study["out"]
    assert study["code"] == 0
    splits = study["log"].read_text().split()
    # The search opens train and val only; the final run opens train, then test once, last.
    assert splits.count("test") == 1 and splits[-1] == "test"
    assert splits[: splits.index("test")].count("val") == 3  # one per trial

    trials = list(csv.DictReader((out / "trials.csv").open()))
    assert [t["number"] for t in trials] == ["0", "1", "2"]
    assert {t["state"] for t in trials} <= {"complete", "pruned"}
    assert all(t["run_dir"].endswith(f"trials/0000{t['number']}") for t in trials)
    for t in trials:  # each trial trained once, in its own folder, without checkpoints
        names = {p.name for p in (out / "trials" / f"0000{t['number']}").iterdir()}
        # (besides the run's list of its files and the run folder's lock)
        assert names - {"run_files.json", ".rankedlist.lock"} == {"config.yaml", "metrics.jsonl"}
    s = load_study(out / "study.journal", "e2e")
    assert len(s.trials) == 3
    assert all(t.intermediate_values for t in s.trials)  # each reported while it trained

    report = (out / "report.md").read_text()
    headings = ["Search space", "Best configuration", "Test metrics", "Optimisation history",
                "Parameter importances", "Trials"]  # fmt: skip
    assert all(f"## {h}" in report for h in headings)
    assert "the trial's checkpoint is not reused" in report
    assert (out / "history.png").stat().st_size > 1000
    assert (out / "curves.png").stat().st_size > 1000
    assert "recall@1" in yaml.safe_load((out / "final" / "metrics.json").read_text())["test"]


def test_best_yaml_is_the_complete_recipe_of_the_best_trial(study):
    out = study["out"]
    best = min(
        (t for t in load_study(out / "study.journal", "e2e").trials if t.value is not None),
        key=lambda t: -t.value,
    )
    config = load_config(out / "best.yaml")
    overrides = dict(o.split("=", 1) for o in best.user_attrs["overrides"])
    assert config.loss.params["margin"] == pytest.approx(float(overrides["loss.params.margin"]))
    assert config.loss.params["alpha"] == pytest.approx(float(overrides["loss.params.alpha"]))
    assert config.data.p * config.data.k == 16  # the P/K split of the fixed batch
    assert config.data.val_fraction == 0.0  # the recipe's own split: all training classes
    assert config.train.select_metric == "map@r"
    assert config.train.run_dir == str(out / "best")
    assert config.data.dataset == "glyphs_recorded" and config.train.iterations == ITERATIONS


def test_best_yaml_trains(study):
    best = study["out"] / "best.yaml"
    assert run_cli(["train", "--config", str(best), "train.iterations=2"]) == 0
    assert (study["out"] / "best" / "metrics.json").is_file()


def final_files(out):
    """The final run's files: name -> (bytes, modification time in ns)."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in (out / "final").iterdir()
        if p.is_file()
    }


def run_recorded(argv, log) -> int:
    os.environ[SPLITS_LOG] = str(log)
    try:
        return run_cli(argv)
    finally:
        os.environ.pop(SPLITS_LOG)


def test_the_same_command_again_changes_nothing_and_more_trials_are_refused(study, capsys):
    out, log = study["out"], study["log"]
    before = log.read_text().split()
    files = final_files(out)
    metrics = (out / "final" / "metrics.json").read_bytes()
    assert "last.pt" in files and files["last.pt"][0] > 0
    capsys.readouterr()

    assert run_recorded(study["argv"], log) == 0  # the same command, the same N
    assert "reused (not re-tested)" in capsys.readouterr().out

    more = [*study["argv"]]
    more[more.index("--trials") + 1] = "5"
    assert run_recorded(more, log) == 2  # more trials after the final test: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "study 'e2e' was tested" in err[0] and "--trials 5" in err[0]
    assert str(out / "final" / "metrics.json") in err[0]
    assert "another --study name and --out" in err[0]

    after = log.read_text().split()
    assert after.count("test") == before.count("test") == 1  # the test split: read once
    assert after.count("val") == before.count("val")  # and no trial ran
    assert len(load_study(out / "study.journal", "e2e").trials) == 3
    assert not (out / "trials" / "00003").exists()
    assert final_files(out) == files  # the final run untouched: same bytes, same times
    assert (out / "final" / "metrics.json").read_bytes() == metrics


def test_more_trials_are_fine_until_the_final_test(tmp_path, capsys):
    """A study stopped before its final test (here: --search-only) may grow; once tested, not."""
    register_recorded_glyphs()
    out, log = tmp_path / "out", tmp_path / "splits.log"
    argv = ["tune", "--config", GLYPHS, "--trials", "1", "--study", "grow", "--out", str(out),
            "--pruner", "none", "data.dataset=glyphs_recorded", *TINY, "train.iterations=2",
            "train.eval_every=2"]  # fmt: skip
    assert run_recorded([*argv, "--search-only"], log) == 0
    assert not (out / "final").exists()
    argv[argv.index("--trials") + 1] = "2"
    assert run_recorded(argv, log) == 0  # one more trial, then the final run, tested once
    assert log.read_text().split().count("test") == 1
    assert len(load_study(out / "study.journal", "grow").trials) == 2
    record = load_study(out / "study.journal", "grow").user_attrs["rankedlist_tune_tested"]
    assert record["n_trials"] == 2 and "recall@1" in record["test"]
    capsys.readouterr()
    argv[argv.index("--trials") + 1] = "3"
    assert run_recorded(argv, log) == 2
    assert "--trials 3" in capsys.readouterr().err
    assert log.read_text().split().count("test") == 1
    assert len(load_study(out / "study.journal", "grow").trials) == 2
