"""``rankedlist tune --folds F``: each trial trains once per class-disjoint validation fold and
its objective is the mean of the folds' best validation values (read back here from each fold
run's own metrics log); F x data.val_fraction > 1 is one error line before anything runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from _tune_helpers import GLYPHS, TINY, load_study, run_cli

from rankedlist.training.config import load_config
from rankedlist.training.recipe_data import get_split_dataset

optuna = pytest.importorskip("optuna")
ITERATIONS = 4


def val_maps(run_dir: Path) -> dict[int, float]:
    """Iteration -> validation MAP@R, from the run's metrics.jsonl."""
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["val/map@r"] for r in records if "val/map@r" in r}


@pytest.mark.slow
def test_a_two_fold_trial_scores_the_mean_of_its_two_runs(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["tune", "--config", GLYPHS, "--trials", "1", "--study", "folds", "--out", str(out),
            "--folds", "2", "--search-only", "--pruner", "none", *TINY,
            f"train.iterations={ITERATIONS}", "train.eval_every=2"]  # fmt: skip
    assert run_cli(argv) == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    assert "the mean over 2 class-disjoint validation folds" in printed

    (trial,) = load_study(out / "study.journal", "folds").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    fold_dirs = [out / "trials" / "00000" / f"fold{f}" for f in (0, 1)]
    assert trial.user_attrs["fold_run_dirs"] == [str(d) for d in fold_dirs]
    logged = [val_maps(d) for d in fold_dirs]
    best = [max(values.values()) for values in logged]
    assert trial.user_attrs["fold_values"] == pytest.approx(best, rel=1e-9)
    assert trial.value == pytest.approx((best[0] + best[1]) / 2, rel=1e-9)
    assert best[0] != best[1]  # two different validation splits
    # Pruning: fold f's validation at iteration t is reported at step f * iterations + t.
    assert trial.intermediate_values == pytest.approx(
        {**logged[0], **{ITERATIONS + t: v for t, v in logged[1].items()}}
    )

    # Each fold ran on its own val split: class-disjoint, and trained without it.
    configs = [load_config(d / "config.yaml") for d in fold_dirs]
    assert [c.data.options["val_fold"] for c in configs] == [0, 1]
    assert all(c.data.val_fraction == 0.2 for c in configs)
    vals = [set(get_split_dataset(c, "val", None).classes) for c in configs]
    trains = [set(get_split_dataset(c, "train", None).classes) for c in configs]
    assert vals[0] and vals[1] and vals[0].isdisjoint(vals[1])
    assert vals[0].isdisjoint(trains[0]) and vals[1].isdisjoint(trains[1])
    assert vals[1] <= trains[0] and vals[0] <= trains[1]
    # The best configuration is the recipe's own split: no fold in best.yaml.
    assert "val_fold" not in load_config(out / "best.yaml").data.options
    assert not any("val_fold" in o for o in trial.user_attrs["overrides"])
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [float(v) for v in rows[0]["fold_values"].split()] == pytest.approx(best, rel=1e-5)
    report = (out / "report.md").read_text()
    assert "mean over 2 validation folds" in report
    assert "`lr`, `k`: searched by every loss with the same spec" in report


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ("6", "--folds 6 x data.val_fraction 0.2 = 1.2 of the training classes, but the 6 "
              "validation folds must hold disjoint classes (at most all of them); use --folds "
              "<= 5 or data.val_fraction <= 0.1667"),
        ("0", "--folds 0: give the number of validation folds, an integer >= 1"),
    ],
)  # fmt: skip
def test_too_many_folds_is_one_error_line_before_anything_runs(tmp_path, capsys, folds, message):
    out = tmp_path / "out"
    argv = ["tune", "--config", GLYPHS, "--trials", "1", "--out", str(out), "--folds", folds,
            *TINY, "train.iterations=2"]  # fmt: skip
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not out.exists()


@pytest.mark.slow
def test_the_pruner_compares_each_fold_with_the_same_fold_of_other_trials(tmp_path, capsys):
    """Two finished trials scored 0 in fold 0 and 0.99 in fold 1 (at steps 6 + t): the new
    trial passes fold 0 and is stopped at fold 1's first validation (step 9), where it falls
    below their median."""
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
                value=0.5,
                intermediate_values={3: 0.0, 6: 0.0, 9: 0.99, 12: 0.99},
                user_attrs={"overrides": ["optim.lr=0.003"]},
            )  # fmt: skip
        )
    argv = ["tune", "--config", GLYPHS, "--trials", "3", "--study", "prune", "--out", str(out),
            "--space", str(space), "--folds", "2", "--search-only", "--pruner", "median", *TINY,
            "train.iterations=6", "train.eval_every=3"]  # fmt: skip
    assert run_cli(argv) == 0, capsys.readouterr()
    trial = load_study(out / "study.journal", "prune").trials[2]
    assert trial.state == optuna.trial.TrialState.PRUNED
    fold0, fold1 = (out / "trials" / "00002" / f"fold{f}" for f in (0, 1))
    assert sorted(trial.intermediate_values) == [3, 6, 9]  # fold 1's iteration 3 is step 9
    assert trial.intermediate_values[9] == pytest.approx(val_maps(fold1)[3])
    assert sorted(val_maps(fold1)) == [3]  # fold 1 stopped at its first validation
    assert trial.user_attrs["fold_values"] == pytest.approx([max(val_maps(fold0).values())])
    assert trial.user_attrs["note"].startswith("pruned at iteration 3 in fold 1: val map@r")
