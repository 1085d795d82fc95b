"""Search spaces: every loss searches the same shared dimensions plus its own shipped ones, a
--space file overrides them, and every unknown parameter or bad range is an error that names it
(before any trial runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _tune_helpers import GLYPHS, REPO, run_cli

from rankedlist.training.config import load_config
from rankedlist.tune.space import (
    SHARED_DIMENSIONS,
    describe_space,
    load_space,
    shipped_space_path,
    values_to_overrides,
)

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
        ("glyphs", {"lr", "k", "margin", "gap", "Tn", "lam"}),
        ("glyphs_contrastive", {"lr", "k", "pos_margin", "neg_margin"}),
        ("glyphs_triplet", {"lr", "k", "margin"}),
        ("glyphs_ms", {"lr", "k", "alpha", "beta", "base"}),
    ],
)
def test_the_shipped_spaces_load_for_the_glyph_recipes(config, names):
    space = load_space(load_config(REPO / "configs" / f"{config}.yaml"))
    assert set(space.params) == names
    lr = space.params["lr"]  # relative: x the recipe's optim.lr (0.002)
    assert (lr.low, lr.high, lr.log) == pytest.approx((0.0004, 0.01, True))
    assert space.params["k"].choices == (2, 4, 8)  # the splits of the batch of 32 x 4 = 128


SHIPPED_LOSSES = sorted(p.stem for p in shipped_space_path("rll").parent.glob("*.yaml"))


def test_every_shipped_loss_searches_the_same_shared_dimensions():
    """Read from the spaces as built for the glyph recipe (batch 32 x 4, optim.lr 0.002), not
    from the YAML text: lr and k have the same spec and the same bound range for every loss."""
    assert {"rll", "contrastive", "triplet", "multi_similarity", "proxy_anchor"} <= set(
        SHIPPED_LOSSES
    )
    described = {
        loss: describe_space(load_space(recipe(f"loss.name={loss}", "loss.params={}")))
        for loss in SHIPPED_LOSSES
    }
    lr = {"sets": "optim.lr", "shared": True, "kind": "float", "log": True,
          "spec": {"low": 0.2, "high": 5.0, "log": True, "relative": True}}  # fmt: skip
    k = {"sets": "data.k, data.p", "shared": True, "kind": "categorical", "choices": [2, 4, 8],
         "spec": {"choices": [2, 3, 4, 6, 8]}}  # fmt: skip
    for loss, dims in described.items():
        assert list(dims)[:2] == ["lr", "k"], loss
        assert {n for n, d in dims.items() if d["shared"]} == {"lr", "k"}, loss
        assert dims["lr"]["low"] == pytest.approx(0.2 * 0.002) and dims["lr"]["high"] == 0.01
        assert {key: v for key, v in dims["lr"].items() if key not in ("low", "high")} == lr
        assert dims["k"] == k, loss
        assert dims["lr"] == described["rll"]["lr"], loss  # identical, bound values included
    assert {n for n in SHARED_DIMENSIONS} == {"lr", "k"}
    # Each shipped file keeps only its loss's own parameters.
    for loss in SHIPPED_LOSSES:
        own = yaml.safe_load(shipped_space_path(loss).read_text())["parameters"]
        assert not set(own) & set(SHARED_DIMENSIONS), loss
        assert set(described[loss]) == {"lr", "k", *own}, loss
    assert json.loads(json.dumps(described)) == described  # plain values


def test_a_space_file_may_override_a_shared_dimension_which_is_then_not_shared(tmp_path):
    space = load_space(
        recipe(), write(tmp_path, "parameters:\n  lr: {low: 1.0e-3, high: 2.0e-3, log: true}\n")
    )
    dims = describe_space(space)
    assert dims["lr"]["shared"] is False and (dims["lr"]["low"], dims["lr"]["high"]) == (
        0.001,
        0.002,
    )
    assert dims["k"]["shared"] is True and dims["margin"]["shared"] is False
    only = load_space(recipe(), write(tmp_path, "replace: true\nparameters:\n  k: null\n"
                                      "  Tn: {low: 1, high: 5}\n"))  # fmt: skip
    assert list(only.params) == ["Tn"] and only.shared == ()


def test_the_shared_k_is_left_out_when_no_choice_splits_the_batch():
    """A recipe whose batch none of the shared choices divides (5 x 7 = 35) keeps its own split
    (a --space file's k with no fitting choice stays an error: see the bad-space cases)."""
    space = load_space(recipe("data.p=5", "data.k=7"))
    assert "k" not in space.params and "lr" in space.params
    assert any(n.startswith("k: not searched (none of the choices") for n in space.notes)


def test_proxy_anchor_searches_the_proxy_learning_rate():
    space = load_space(recipe("loss.name=proxy_anchor", "loss.params={}"))
    assert set(space.params) == {"lr", "k", "margin", "alpha", "optim.loss_lr_multiplier"}
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
    assert list(only.params) == ["lam"]  # replace: the shared dimensions go too


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


@pytest.mark.slow
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
