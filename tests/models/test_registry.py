"""create_model / list_models / register_model: names, prefixes, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankedlist.models import create_model, list_models, register_model
from rankedlist.models.glyph_net import GlyphNet


def test_list_models_has_the_project_models() -> None:
    names = list_models()
    assert "bninception" in names and "glyphnet" in names
    with_timm = list_models(include_timm=True)
    assert "resnet50" in with_timm and "vit_small_patch16_224" in with_timm


def test_unknown_name_lists_the_available_models() -> None:
    with pytest.raises(ValueError) as info:
        create_model("resnet_fifty_nine")
    message = str(info.value)
    assert "resnet_fifty_nine" in message
    assert "bninception" in message and "glyphnet" in message and "timm" in message


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="Did you mean: .*glyphnet"):
        create_model("glyphnett")


@pytest.mark.parametrize("name", ["resnet18", "timm/resnet18", "timm:resnet18"])
def test_timm_names_and_prefixes(name: str) -> None:
    model = create_model(name, embedding_dim=8)
    assert model.input_style == "imagenet" and model.input_size == 224
    assert model.input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.input_std == pytest.approx((0.229, 0.224, 0.225))
    assert model.backbone.channels == {"high": 512}


def test_aliases_and_case() -> None:
    assert isinstance(create_model("GlyphNet").backbone, GlyphNet)
    assert create_model("glyph_net").input_style == "glyphs"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pooling": "median"}, "pooling must be one of"),
        ({"pooling": "token"}, "class token"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"pretrained": True}, "no downloadable pretrained weights"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("glyphnet", **kwargs)


def test_token_pooling_needs_a_class_token() -> None:
    with pytest.raises(ValueError, match="class token"):
        create_model("resnet18", pooling="token")


def test_bad_name_type() -> None:
    with pytest.raises(TypeError, match="model name"):
        create_model(None)  # type: ignore[arg-type]


def test_register_model_and_spec() -> None:
    class Tiny(nn.Module):
        input_style = "glyphs"
        input_size = 8

        def __init__(self, levels: tuple[str, ...]) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)
            self.channels = {"high": 5}

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"high": self.conv(x)}

    @register_model("tiny_test_net")
    def build(levels, pretrained, pretrained_path):  # noqa: ANN001, ANN202
        return Tiny(levels)

    assert "tiny_test_net" in list_models()
    model = create_model("tiny_test_net", embedding_dim=4)
    assert model(torch.randn(2, 3, 8, 8))["high"].shape == (2, 4)
    assert model.spec["name"] == "tiny_test_net" and model.spec["embedding_dim"] == 4
    assert model.input_mean is None
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test_net", lambda **kw: Tiny(("high",)))
