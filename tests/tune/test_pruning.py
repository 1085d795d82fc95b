"""A hopeless trial is pruned: the study already holds two finished trials that reached a
validation MAP@R of 0.99 at every validation, so the new trial, reported to Optuna at each of
its validations, falls below their median and the median pruner stops its training early."""

from __future__ import annotations

import csv

import pytest
from _tune_helpers import GLYPHS, TINY, load_study, run_cli

optuna = pytest.importorskip("optuna")


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_during_training(tmp_path, capsys):
    out = tmp_path / "out"
    space = tmp_path / "space.yaml"
    space.write_text("replace: true\nparameters:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    out.mkdir()
    study = load_study(out / "study.journal", "prune", create=True)
    lr = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.003},
                distributions={"lr": lr},
                value=0.99,
                intermediate_values={3: 0.99, 6: 0.99, 9: 0.99},
                user_attrs={"overrides": ["optim.lr=0.003"]},
            )
        )
    argv = ["tune", "--config", GLYPHS, "--trials", "3", "--study", "prune", "--out", str(out),
            "--space", str(space), "--search-only", "--pruner", "median", *TINY,
            "train.iterations=9", "train.eval_every=3"]  # fmt: skip
    capsys.readouterr()
    assert run_cli(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    trial = load_study(out / "study.journal", "prune").trials[2]
    assert trial.state == optuna.trial.TrialState.PRUNED
    # Validations at 3 and 6 were reported; the median pruner acts from the second one on.
    assert sorted(trial.intermediate_values) == [3, 6]
    assert trial.user_attrs["iteration"] == 6  # stopped before the 9 iterations
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows[2]["state"] == "pruned" and rows[2]["iteration"] == "6"
    assert "| 2 | pruned |" in (out / "report.md").read_text()
    # The tune log says why in one line of its own; the trainer's "Resume with: rankedlist train
    # --resume ..." hint is for an interrupted run, not for a trial the pruner stopped.
    value = trial.intermediate_values[6]
    line = f"tune: trial 2: pruned at iteration 6 (val map@r {value:.4f}, below the median of"
    assert f"{line} the earlier trials at that iteration)" in printed, printed
    assert rows[2]["note"].startswith(f"pruned at iteration 6: val map@r {value:.4f}")
    assert "Resume with" not in printed
