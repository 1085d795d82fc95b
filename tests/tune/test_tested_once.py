"""The test split of a study is read once: the guards of :mod:`rankedlist.tune.final` on their
own (in-memory studies, no training): a recorded test takes exactly its N again, an ``--out``
holding a tested final run the study has no record of takes no more trials, and the final run
never replaces a tested run of another configuration."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from _tune_helpers import GLYPHS, TINY

from rankedlist.tune.final import TESTED_ATTR, final_run, refuse_a_second_test
from rankedlist.tune.search import TuneOptions, prepare

optuna = pytest.importorskip("optuna")


def study_with(n_complete: int):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _ in range(n_complete):
        trial = study.ask()
        study.tell(trial, 0.5)
    return study


def test_a_recorded_test_takes_exactly_its_n_again(tmp_path):
    study = study_with(3)
    metrics = str(tmp_path / "final" / "metrics.json")
    study.set_user_attr(TESTED_ATTR, {"n_trials": 3, "trial": 1, "metrics": metrics})
    setup = SimpleNamespace(n_trials=3, name="s", out=tmp_path)
    refuse_a_second_test(study, setup)  # the same N: fine (nothing runs, nothing is tested)
    for n, why in ((4, "asks for more trials"), (2, "is not its number of trials (3)")):
        setup.n_trials = n
        with pytest.raises(ValueError, match="study 's' was tested already") as info:
            refuse_a_second_test(study, setup)
        assert f"--trials {n} {why}" in str(info.value) and metrics in str(info.value)
        assert f"--study s-2 --out {tmp_path}-2" in str(info.value)


def test_an_untested_study_may_grow_but_not_into_a_tested_out_folder(tmp_path):
    study = study_with(2)
    setup = SimpleNamespace(n_trials=5, name="s", out=tmp_path)
    refuse_a_second_test(study, setup)  # stopped before its final test: more trials are fine
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "metrics.json").write_text('{"test": {"recall@1": 0.5}}')
    with pytest.raises(ValueError, match="holds a final run tested on the test split already"):
        refuse_a_second_test(study, setup)  # e.g. a study finished before the record existed
    setup.n_trials = 2
    refuse_a_second_test(study, setup)  # its own N: the final run's metrics are reused


def test_the_final_run_never_replaces_a_tested_run_of_another_configuration(tmp_path):
    out = tmp_path / "out"
    setup = prepare(TuneOptions(GLYPHS, trials=1, out=out, overrides=[*TINY, "train.iterations=2"]))
    study = study_with(0)
    trial = study.ask()
    trial.set_user_attr("overrides", ["optim.lr=0.001"])
    study.tell(trial, 0.5)
    final = out / "final"
    final.mkdir(parents=True)
    (final / "config.yaml").write_text("another: recipe\n")
    (final / "metrics.json").write_text(json.dumps({"test": {"recall@1": 0.5}}))
    (final / "last.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match="holds a final run tested on the test split already"):
        final_run(setup, study.trials[0], out, None)
    assert sorted(p.name for p in final.iterdir()) == ["config.yaml", "last.pt", "metrics.json"]
    assert (final / "last.pt").read_bytes() == b"weights"
