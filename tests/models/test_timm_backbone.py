"""timm backbones: multi-level features, local checkpoints, and the offline error for
pretrained=True (the download functions are replaced, so no network is touched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankedlist.models import PretrainedWeightsError, create_model


def _offline(*args: object, **kwargs: object) -> None:
    raise OSError("We couldn't connect to 'https://huggingface.co' (offline test)")


def test_pretrained_without_network_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_state_dict_from_hf", _offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", _offline)
    monkeypatch.setattr(builder, "download_cached_file", _offline)
    with pytest.raises(RuntimeError) as info:
        create_model("resnet18", pretrained=True)
    message = str(info.value)
    assert isinstance(info.value, PretrainedWeightsError)
    assert "'resnet18' could not be fetched" in message
    assert "offline test" in message and "huggingface.co/timm/resnet18" in message
    assert "pretrained_path" in message and "pretrained=False" in message


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    import timm

    torch.manual_seed(1)
    reference = timm.create_model("resnet18", num_classes=1000)  # classifier included
    state = reference.state_dict()
    path = tmp_path_factory.mktemp("timm") / "resnet18.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)  # nested, as training scripts save
    return path, state


@pytest.mark.parametrize("multi_level", [False, True], ids=["single", "multi"])
def test_pretrained_path_loads_local_weights(resnet18_file, multi_level: bool) -> None:  # noqa: ANN001
    path, state = resnet18_file
    model = create_model("resnet18", embedding_dim=8, pretrained_path=path, multi_level=multi_level)
    torch.testing.assert_close(model.backbone.model.conv1.weight.detach(), state["conv1.weight"])
    torch.testing.assert_close(
        model.backbone.model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"]
    )


def test_pretrained_path_with_a_missing_key(resnet18_file, tmp_path: Path) -> None:  # noqa: ANN001
    _, state = resnet18_file
    partial = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(PretrainedWeightsError, match="missing.*layer1.0.conv1.weight"):
        create_model("resnet18", pretrained_path=path)


def test_pretrained_path_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "glyph.pth"
    torch.save(create_model("glyphnet").backbone.state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="No tensor"):
        create_model("resnet18", pretrained_path=path)
    with pytest.raises(FileNotFoundError):
        create_model("resnet18", pretrained_path=tmp_path / "missing.pth")


def test_multi_level_uses_the_last_three_stages() -> None:
    model = create_model("resnet18", embedding_dim=16, multi_level=True).eval()
    assert model.backbone.channels == {"low": 128, "mid": 256, "high": 512}
    with torch.no_grad():
        maps = model.backbone(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps.values()] == [(128, 8, 8), (256, 4, 4), (512, 2, 2)]
    custom = create_model("resnet18", embedding_dim=16, multi_level=True, out_indices=(1, 2, 3))
    assert custom.backbone.channels == {"low": 64, "mid": 128, "high": 256}
    with pytest.raises(ValueError, match="out_indices"):
        create_model("resnet18", multi_level=True, out_indices=(3, 4))


def test_vit_input_convention() -> None:
    model = create_model("vit_tiny_patch16_224", img_size=32)
    assert model.input_style == "imagenet" and model.input_size == 32
    assert model.input_mean == pytest.approx((0.5, 0.5, 0.5))
