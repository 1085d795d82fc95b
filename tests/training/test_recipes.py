"""Every shipped recipe builds: its losses (the factory validates their parameters) and, once per
kind of backbone, its model without downloading weights and one forward pass at the recipe's
input size (so the multi-level heads fit the feature maps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankedlist.training.config import load_config
from rankedlist.training.loss_factory import build_loss
from rankedlist.training.run import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def _backbone_kinds() -> list[Path]:
    """One recipe per (model, multi-level, input size, options): building BN-Inception and
    ResNet-50 takes seconds each on 2 cores, so each kind is built once."""
    kinds: dict[tuple, Path] = {}
    for path in CONFIGS:
        c = load_config(path)
        key = (c.model.name, c.model.multi_level, c.data.image_size, repr(c.model.options))
        kinds.setdefault(key, path)
    return list(kinds.values())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_losses_build(path):
    config = load_config(path)
    loss = build_loss(
        config.loss.name, config.loss.params, num_classes=10,
        embedding_dim=config.model.embedding_dim, ctx=None,
        memory_size=config.loss.memory_size, memory_start=config.loss.memory_start,
    )  # fmt: skip
    assert isinstance(loss, torch.nn.Module)


@pytest.mark.parametrize("path", _backbone_kinds(), ids=lambda p: p.stem)
def test_recipe_model_builds_and_runs_one_forward(path):
    config = load_config(path)
    model = build_model(config, load_pretrained=False)  # no network in tests
    assert model.head_names == (("low", "mid", "high") if config.model.multi_level else ("high",))
    size = config.data.image_size or model.input_size
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        h: (1, config.model.embedding_dim) for h in model.head_names
    }
