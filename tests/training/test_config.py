"""The typed config: YAML recipes, dotted overrides with type coercion, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rankedlist.training.config import apply_overrides, config_from_dict, load_config, save_config
from rankedlist.training.config_schema import Config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_validate():
    config = config_from_dict({})
    assert isinstance(config, Config)
    assert config.optim.name == "adamw" and config.train.amp == "none"


def test_yaml_and_overrides_are_coerced_to_the_declared_types(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"p": 8}, "optim": {"lr": 0.1}}))
    config = load_config(
        path,
        [
            "optim.lr=3e-3",  # YAML 1.1 would read this as a string
            "train.iterations=1e3",
            "data.image_size=none",
            "train.num_threads=2",
            "model.pretrained=yes",
            "schedule.milestones=100,200",
            "optim.clip_grad_norm=null",
            "loss.params.margin=0.2",
            "loss.params.gradient=autograd",
            "data.options={font_size: 20}",
        ],
    )
    assert config.data.p == 8
    assert config.optim.lr == pytest.approx(3e-3) and isinstance(config.optim.lr, float)
    assert config.train.iterations == 1000 and isinstance(config.train.iterations, int)
    assert config.data.image_size is None
    assert config.train.num_threads == 2
    assert config.model.pretrained is True
    assert config.schedule.milestones == [100, 200]
    assert config.optim.clip_grad_norm is None
    assert config.loss.params == {"margin": 0.2, "gradient": "autograd"}
    assert config.data.options == {"font_size": 20}
    assert apply_overrides(config, ["schedule.milestones=[5, 7]"]).schedule.milestones == [5, 7]


@pytest.mark.parametrize(
    ("override", "error", "words"),
    [
        ("foo=1", ValueError, ["unknown key 'foo'", "valid keys", "data", "train"]),
        ("model.foo=1", ValueError, ["unknown key 'model.foo'", "embedding_dim", "multi_level"]),
        ("train.foo.bar=1", ValueError, ["unknown key 'train.foo'", "iterations"]),
        ("optim.lr=fast", TypeError, ["optim.lr", "a number"]),
        ("train.iterations=1.5", TypeError, ["train.iterations", "an integer"]),
        ("data.p=true", TypeError, ["data.p", "an integer"]),
        ("model.pretrained=maybe", TypeError, ["model.pretrained", "boolean"]),
        ("train.amp=fp32", ValueError, ["train.amp", "bf16"]),
        ("optim.name=adam", ValueError, ["optim.name", "sgd"]),
        ("schedule.milestones=300,200", ValueError, ["schedule.milestones", "increasing"]),
        ("data.val_fraction=1.0", ValueError, ["data.val_fraction"]),
        ("optim.lr", ValueError, ["key=value"]),
        ("model=3", ValueError, ["section"]),
    ],
)
def test_bad_overrides_name_the_problem(override, error, words):
    with pytest.raises(error) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value)


def test_unknown_key_in_a_yaml_section_lists_the_valid_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(
        ValueError, match=r"unknown key 'optim.learning_rate'.*valid keys: name, lr"
    ):
        load_config(path)
    path.write_text("trainer:\n  iterations: 3\n")
    with pytest.raises(ValueError, match=r"unknown key 'trainer' in the top level"):
        load_config(path)
    path.write_text("data: 3\n")
    with pytest.raises(TypeError, match="data must be a mapping"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="rankedlist recipes"):
        load_config(tmp_path / "nope.yaml")


def test_base_recipe_is_merged_by_section_and_params_replaced(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "loss: {name: rll, params: {margin: 0.4, Tn: 10}}\noptim: {lr: 0.5, name: sgd}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "base: parent.yaml\nloss: {name: triplet, params: {margin: 0.1}}\noptim: {lr: 0.25}\n"
    )
    config = load_config(tmp_path / "child.yaml")
    assert config.loss.name == "triplet" and config.loss.params == {"margin": 0.1}
    assert config.optim.name == "sgd" and config.optim.lr == 0.25


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["optim.lr=0.02", "loss.params.margin=0.3", "train.seed=7"])
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(path) == config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_has_a_description(path):
    config = load_config(path)
    assert config.description
    assert config.train.run_dir.startswith("runs/")
