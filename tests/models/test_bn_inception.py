"""BN-Inception: shapes, feature taps, the multi-level heads, and compatibility with the
standard Caffe-converted ImageNet checkpoint (bn_inception-52deb4733.pth). The checkpoint is
BUILT HERE from an independent table of its layers; nothing is downloaded."""

from __future__ import annotations

import functools
import urllib.error
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from rankedlist.models import BNINCEPTION_URL, PretrainedWeightsError, create_model

# Every convolution of the checkpoint as (name, in_channels, out_channels, kernel), copied from
# the layer list of Cadene's pretrainedmodels BNInception. Each conv NAME has NAME.weight,
# NAME.bias and a BatchNorm NAME_bn with weight, bias, running_mean, running_var.
_STEM = [("conv1_7x7_s2", 3, 64, 7), ("conv2_3x3_reduce", 64, 64, 1), ("conv2_3x3", 64, 192, 3)]
# block: in, 1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3 (both), pool_proj
_BLOCKS = {
    "3a": (192, 64, 64, 64, 64, 96, 32),
    "3b": (256, 64, 64, 96, 64, 96, 64),
    "3c": (320, None, 128, 160, 64, 96, None),
    "4a": (576, 224, 64, 96, 96, 128, 128),
    "4b": (576, 192, 96, 128, 96, 128, 128),
    "4c": (576, 160, 128, 160, 128, 160, 128),
    "4d": (608, 96, 128, 192, 160, 192, 128),
    "4e": (608, None, 128, 192, 192, 256, None),
    "5a": (1056, 352, 192, 320, 160, 224, 128),
    "5b": (1024, 352, 192, 320, 192, 224, 128),
}


def _conv_table() -> list[tuple[str, int, int, int]]:
    table = list(_STEM)
    for block, (cin, c1, r3, c3, rd, cd, pp) in _BLOCKS.items():
        n = f"inception_{block}"
        if c1:
            table.append((f"{n}_1x1", cin, c1, 1))
        table += [
            (f"{n}_3x3_reduce", cin, r3, 1),
            (f"{n}_3x3", r3, c3, 3),
            (f"{n}_double_3x3_reduce", cin, rd, 1),
            (f"{n}_double_3x3_1", rd, cd, 3),
            (f"{n}_double_3x3_2", cd, cd, 3),
        ]
        if pp:
            table.append((f"{n}_pool_proj", cin, pp, 1))
    return table


def _standard_checkpoint(old_bn_shapes: bool = True) -> dict[str, torch.Tensor]:
    """A fresh dict (tensors shared) of :func:`_make_checkpoint`, built once per flag."""
    return dict(_make_checkpoint(old_bn_shapes))


@functools.cache
def _make_checkpoint(old_bn_shapes: bool) -> dict[str, torch.Tensor]:
    """A checkpoint with the standard key names and random values. Like the real file (saved by
    PyTorch 0.3), BatchNorm vectors are stored as (1, C) and there is no num_batches_tracked."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for name, cin, cout, k in _conv_table():
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1
        shape = (1, cout) if old_bn_shapes else (cout,)
        sd[f"{name}_bn.weight"] = 1 + 0.1 * torch.randn(shape, generator=g)
        sd[f"{name}_bn.bias"] = 0.1 * torch.randn(shape, generator=g)
        sd[f"{name}_bn.running_mean"] = 0.1 * torch.randn(shape, generator=g)
        sd[f"{name}_bn.running_var"] = 1 + torch.rand(shape, generator=g)
    sd["last_linear.weight"] = torch.randn(1000, 1024, generator=g) * 0.01
    sd["last_linear.bias"] = torch.zeros(1000)
    return sd


def test_the_table_matches_the_known_checkpoint_shapes() -> None:
    # Independent spot checks of a few well-known keys of bn_inception-52deb4733.pth.
    sd = _standard_checkpoint(old_bn_shapes=False)
    expected = {
        "conv1_7x7_s2.weight": (64, 3, 7, 7),
        "conv1_7x7_s2_bn.running_var": (64,),
        "conv2_3x3.weight": (192, 64, 3, 3),
        "inception_3a_1x1.weight": (64, 192, 1, 1),
        "inception_3c_double_3x3_2.weight": (96, 96, 3, 3),
        "inception_4e_3x3.weight": (192, 128, 3, 3),
        "inception_5a_1x1.weight": (352, 1056, 1, 1),
        "inception_5b_pool_proj.weight": (128, 1024, 1, 1),
        "inception_5b_double_3x3_1.weight": (224, 192, 3, 3),
        "last_linear.weight": (1000, 1024),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert len([k for k in sd if k.endswith(".weight") and "_bn" not in k]) == 69 + 1


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "bn_inception-52deb4733.pth"
    # the real file predates PyTorch 1.6: legacy (non-zip) serialisation of an OrderedDict
    torch.save(OrderedDict(_standard_checkpoint()), path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def multi_model(checkpoint_file: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "bninception", embedding_dim=64, multi_level=True, pretrained_path=checkpoint_file
    ).eval()


def test_checkpoint_loads_with_exact_keys(checkpoint_file: Path, multi_model) -> None:  # noqa: ANN001
    sd = _standard_checkpoint()
    own = multi_model.backbone.state_dict()
    expected_keys = {k for k in sd if not k.startswith("last_linear.")}
    assert {k for k in own if not k.endswith("num_batches_tracked")} == expected_keys
    for key in expected_keys:
        torch.testing.assert_close(own[key], sd[key].reshape(own[key].shape), msg=key)


def test_forward_shapes_and_taps(multi_model) -> None:  # noqa: ANN001
    model = multi_model
    assert model.input_style == "bninception" and model.input_size == 227
    assert model.input_mean == (104.0, 117.0, 123.0) and model.input_std == (1.0, 1.0, 1.0)
    assert model.backbone.channels == {"low": 576, "mid": 1056, "high": 1024}
    for size in (227, 224):
        x = torch.randn(1, 3, size, size) * 50
        with torch.no_grad():
            maps = model.backbone(x)
            out = model(x)
        assert maps["low"].shape == (1, 576, 14, 14)
        assert maps["mid"].shape == (1, 1056, 7, 7)
        assert maps["high"].shape == (1, 1024, 7, 7)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "low": (1, 64),
            "mid": (1, 64),
            "high": (1, 64),
        }
        assert torch.isfinite(model.fuse(out)).all()
    # paper heads: 5x5/3 pooling of 14x14 -> 4x4 and of 7x7 -> 2x2 (Caffe ceil rounding)
    assert model.heads["low"].grid == (4, 4) and model.heads["mid"].grid == (2, 2)
    assert model.heads["low"].fc1.in_features == 128 * 16
    assert model.heads["mid"].fc1.in_features == 128 * 4
    for head in ("low", "mid"):
        convs_and_fcs = [
            m
            for m in model.heads[head].modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        ]
        assert len(convs_and_fcs) == 3 and all(m.bias is None for m in convs_and_fcs)


def test_single_level_forward_at_227() -> None:
    model = create_model("bninception", embedding_dim=32).eval()
    assert model.head_names == ("high",)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 227, 227))
    assert out["high"].shape == (1, 32)


def test_pretrained_download_uses_the_known_url(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(url: str, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append(url)
        return _standard_checkpoint()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = create_model("bninception", embedding_dim=8, pretrained=True)
    assert calls == [BNINCEPTION_URL]
    expected = _standard_checkpoint()["inception_5b_pool_proj.weight"]
    torch.testing.assert_close(model.backbone.inception_5b_pool_proj.weight.detach(), expected)


def test_pretrained_without_network_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        create_model("bninception", pretrained=True)
    message = str(info.value)
    assert isinstance(info.value, PretrainedWeightsError)
    assert "could not be fetched" in message and BNINCEPTION_URL in message
    assert "Temporary failure in name resolution" in message
    assert "pretrained_path" in message and "pretrained=False" in message


def test_checkpoint_missing_a_key_is_reported(tmp_path: Path) -> None:
    sd = _standard_checkpoint()
    del sd["inception_4c_3x3.weight"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(PretrainedWeightsError, match="missing.*inception_4c_3x3.weight"):
        create_model("bninception", pretrained_path=path)


def test_checkpoint_with_wrong_shapes_or_keys(tmp_path: Path) -> None:
    sd = _standard_checkpoint()
    sd["inception_3a_1x1.weight"] = torch.zeros(32, 192, 1, 1)
    sd["extra_layer.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(PretrainedWeightsError) as info:
        create_model("bninception", pretrained_path=path)
    assert "inception_3a_1x1.weight (32, 192, 1, 1)" in str(info.value)
    assert "extra_layer.weight" in str(info.value)

    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(PretrainedWeightsError, match="No tensor"):
        create_model("bninception", pretrained_path=path)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("bninception", pretrained_path=tmp_path / "nope.pth")
