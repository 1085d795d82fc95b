"""Search spaces: the shipped ones load for every loss, a --space file overrides them, and every
unknown parameter or bad range is an error that names it (before any trial runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tune_helpers import GLYPHS, REPO, run_cli

from rankedlist.training.config import load_config
from rankedlist.tune.space import load_space, shipped_space_path, values_to_overrides

pytest.importorskip("optuna")


def recipe(*overrides: str):
    return load_config(GLYPHS, list(overrides))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ("glyphs", {"lr", "margin", "gap", "Tn", "lam", "k"}),
        ("glyphs_contrastive", {"lr", "pos_margin", "neg_margin"}),
        ("glyphs_triplet", {"lr", "margin"}),
        ("glyphs_ms", {"lr", "alpha", "beta", "base"}),
    ],
)
def test_the_shipped_spaces_load_for_the_glyph_recipes(config, names):
    space = load_space(load_config(REPO / "configs" / f"{config}.yaml"))
    assert set(space.params) == names
    lr = space.params["lr"]  # relative: x the recipe's optim.lr (0.002)
    assert (lr.low, lr.high, lr.log) == pytest.approx((0.0004, 0.01, True))


def test_proxy_anchor_searches_the_proxy_learning_rate():
    space = load_space(recipe("loss.name=proxy_anchor", "loss.params={}"))
    assert set(space.params) == {"lr", "margin", "alpha", "optim.loss_lr_multiplier"}
    for loss in ("rll", "contrastive", "triplet", "multi_similarity", "proxy_anchor"):
        assert shipped_space_path(loss).is_file()


def test_k_keeps_the_splits_of_the_fixed_batch_and_gap_sets_alpha():
    config = recipe()  # batch 32 x 4 = 128
    space = load_space(config)
    assert space.params["k"].choices == (2, 4, 8)
    assert any("[3, 6]" in note for note in space.notes)
    overrides = values_to_overrides(space, {"margin": 0.3, "gap": 0.5, "k": 8}, config)
    assert overrides == ["loss.params.margin=0.3", "loss.params.alpha=0.8", "data.k=8", "data.p=16"]


def test_a_space_file_overrides_adds_and_drops(tmp_path):
    path = write(
        tmp_path,
        "loss: rll\nparameters:\n  margin: {low: 0.2, high: 0.3}\n  Tn: null\n"
        "  optim.weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}\n",
    )
    space = load_space(recipe(), path)
    assert (space.params["margin"].low, space.params["margin"].high) == (0.2, 0.3)
    assert "Tn" not in space.params and "optim.weight_decay" in space.params
    assert "gap" in space.params  # the shipped ones it does not name stay
    only = load_space(
        recipe(), write(tmp_path, "replace: true\nparameters:\n  lam: {low: 0.5, high: 2}\n")
    )
    assert list(only.params) == ["lam"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "parameters:\n  margn: {low: 0.1, high: 0.2}\n",
            r"unknown parameter 'margn'.*valid: lr, k",
        ),
        ("parameters:\n  margin: {low: 0.5, high: 0.2}\n", r"'margin': bad range: low 0.5"),
        ("parameters:\n  Tn: {low: 0, high: 5, log: true}\n", r"'Tn': bad range: a log range"),
        ("parameters:\n  Tn: {low: 1, hihg: 5}\n", r"'Tn': unknown key\(s\) \['hihg'\]"),
        ("parameters:\n  Tn: {low: 1}\n", r"'Tn': high must be a finite number"),
        ("parameters:\n  Tn: [1, 5]\n", r"'Tn': expected \{low"),
        ("parameters:\n  k: {choices: [3, 5]}\n", r"'k': none of the choices \[3, 5\]"),
        ("parameters:\n  k: {low: 2, high: 8}\n", r"'k': takes choices"),
        ("parameters:\n  margin: {low: -0.5, high: 0.2}\n", r"'margin' = -0.5 is rejected.*>= 0"),
        ("parameters:\n  lr: {low: -1.0, high: 0.1}\n", r"'lr' = -1.0 is rejected.*optim.lr"),
        ("parameters:\n  optim.nope: {low: 1, high: 2}\n", r"'optim.nope' = 1.0 is rejected"),
        ("parameters:\n  alpha: {low: 0.5, high: 1.5}\n", r"'gap'.*and 'alpha' are both"),
        ("loss: triplet\nparameters: {}\n", r"is for loss 'triplet' but the recipe trains 'rll'"),
        ("parametres: {}\n", r"unknown key\(s\) \['parametres'\]"),
        ("replace: true\nparameters: {}\n", r"no parameters left"),
    ],
)
def test_a_bad_space_file_is_an_error_naming_the_problem(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_space(recipe(), write(tmp_path, text))


def test_the_command_line_prints_one_error_line_for_a_bad_space(tmp_path, capsys):
    path = write(tmp_path, "parameters:\n  margin: {low: 0.9, high: 0.1}\n")
    argv = ["tune", "--config", GLYPHS, "--trials", "2", "--out", str(tmp_path / "o")]
    assert run_cli([*argv, "--space", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'margin'" in err[0]
    assert not (tmp_path / "o" / "trials").exists()  # nothing ran
    assert run_cli([*argv, "--space", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err


# 24 characters: 12 training classes, 10 of them left for training once data.val_fraction 0.2
# holds 2 out for validation. With data.p=12 the batch is 24: k=2 would need P=12 classes.
FEW_CLASSES = ["data.options.characters=ABCDEFGHJKLMNPQRSTUVWXYZ", "data.p=12", "data.k=2"]


def small_study(tmp_path: Path, space_text: str, trials: int = 2) -> list[str]:
    from _tune_helpers import TINY

    space = write(tmp_path, space_text)
    return ["tune", "--config", GLYPHS, "--trials", str(trials), "--study", "few",
            "--out", str(tmp_path / "out"), "--space", str(space), "--search-only",
            "--pruner", "none", *TINY, *FEW_CLASSES, "train.iterations=2",
            "train.eval_every=2"]  # fmt: skip


def test_k_choices_needing_more_p_than_the_search_split_has_classes_are_left_out(tmp_path, capsys):
    from _tune_helpers import load_study

    argv = small_study(tmp_path, "replace: true\nparameters:\n  k: {choices: [2, 3, 4]}\n")
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    note = "k: choices [2] left out: they need P = 24 / k = [12] classes per batch"
    assert note in printed and "holds only 10 classes" in printed
    study = load_study(tmp_path / "out" / "study.journal", "few")
    assert len(study.trials) == 2
    assert all(t.distributions["k"].choices == (3, 4) for t in study.trials)  # 2: never sampled
    assert {t.params["k"] for t in study.trials} <= {3, 4}
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert note in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("space_text", "message"),
    [
        (
            "replace: true\nparameters:\n  k: {choices: [2]}\n",
            "parameter 'k': the choices [2] that split the batch of 24 need P = 24 / k = [12] "
            "classes per batch, but the search's training split holds only 10 classes",
        ),
        (  # k is not searched: the recipe's own P is checked before any trial
            "replace: true\nparameters:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n",
            "data.p=12 classes per batch, but the search's training split holds only 10 classes",
        ),
    ],
)
def test_no_p_that_fits_the_classes_of_the_search_split_is_one_error_line_up_front(
    tmp_path, capsys, space_text, message
):
    assert run_cli(small_study(tmp_path, space_text)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert message in err[0] and "data.val_fraction 0.2" in err[0]
    assert not (tmp_path / "out" / "trials").exists()  # no trial ran
