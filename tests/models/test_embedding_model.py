"""EmbeddingModel over the registry: output shapes, fusion, parameter groups, frozen BatchNorm,
pooling options. Small inputs and pretrained=False keep it fast; nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rankedlist.models import EmbeddingModel, create_model, global_pool

# (name, extra create_model kwargs, test input size): one per backbone family.
CASES = [
    ("glyphnet", {}, 32),
    ("bninception", {}, 64),
    ("resnet18", {}, 64),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("multi_level", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize(("name", "kwargs", "size"), CASES, ids=IDS)
def test_output_shapes_fuse_and_groups(
    name: str, kwargs: dict, size: int, multi_level: bool
) -> None:
    model = create_model(name, embedding_dim=24, multi_level=multi_level, **kwargs)
    assert isinstance(model, EmbeddingModel)
    expected_heads = ("low", "mid", "high") if multi_level else ("high",)
    assert model.head_names == expected_heads
    assert model.embedding_dim == 24 and model.fused_dim == 24 * len(expected_heads)
    assert isinstance(model.input_size, int) and model.input_size > 0
    assert model.input_style in ("bninception", "imagenet", "glyphs")

    model.eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        out = model(x)
        emb = model.embed(x)
    assert set(out) == set(expected_heads)
    for head in expected_heads:
        assert out[head].shape == (3, 24)
        # raw outputs: not normalised
        assert not np.allclose(out[head].norm(dim=1).numpy(), 1.0, atol=1e-3)

    # fuse: numpy reference of "concatenate in head order, then L2-normalise"
    cat = np.concatenate([out[h].numpy() for h in expected_heads], axis=1)
    ref = cat / np.linalg.norm(cat, axis=1, keepdims=True)
    np.testing.assert_allclose(model.fuse(out).numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.numpy(), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.numpy(), axis=1), 1.0, atol=1e-5)

    # parameter groups partition the parameters; "new" is exactly the heads
    groups = model.parameter_groups()
    ids_b = {id(p) for p in groups["backbone"]}
    ids_n = {id(p) for p in groups["new"]}
    assert not ids_b & ids_n
    assert ids_b | ids_n == {id(p) for p in model.parameters()}
    assert ids_n == {id(p) for p in model.heads.parameters()}
    assert len(ids_b) + len(ids_n) == len(list(model.parameters()))


def test_fuse_rejects_missing_heads() -> None:
    model = create_model("glyphnet", embedding_dim=8, multi_level=True)
    with pytest.raises(ValueError, match="missing"):
        model.fuse({"high": torch.randn(2, 8)})


def _bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [
        t.clone()
        for m in model.backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for t in (m.running_mean, m.running_var)
    ]


@pytest.mark.parametrize(("name", "kwargs", "size"), [CASES[0], CASES[2]], ids=[IDS[0], IDS[2]])
def test_freeze_bn_keeps_running_stats(name: str, kwargs: dict, size: int) -> None:
    frozen = create_model(name, embedding_dim=8, freeze_bn=True, **kwargs)
    frozen.train()
    before = _bn_state(frozen)
    assert before, "backbone has BatchNorm layers"
    x = torch.randn(4, 3, size, size) * 3 + 1
    frozen(x).get("high").sum().backward()
    for a, b in zip(before, _bn_state(frozen), strict=True):
        assert torch.equal(a, b)
    bns = [m for m in frozen.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(not m.training for m in bns)
    assert all(not p.requires_grad and p.grad is None for m in bns for p in m.parameters())
    assert frozen.heads.training  # the heads still train
    trainable = frozen.parameter_groups(trainable_only=True)["backbone"]
    assert all(p.requires_grad for p in trainable)
    assert len(trainable) < len(frozen.parameter_groups()["backbone"])
    # eval() then train() again: still frozen
    frozen.eval().train()
    assert all(not m.training for m in bns)

    # control: without freeze_bn the same forward changes the running statistics
    free = create_model(name, embedding_dim=8, **kwargs).train()
    before = _bn_state(free)
    free(x)
    assert any(not torch.equal(a, b) for a, b in zip(before, _bn_state(free), strict=True))


@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax"])
def test_pooling_options_against_numpy(pooling: str) -> None:
    model = create_model("glyphnet", embedding_dim=16, pooling=pooling).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        fmap = model.backbone(x)["high"].numpy()  # (B, C, H, W)
        out = model(x)["high"].numpy()
    gap, gmp = fmap.mean(axis=(2, 3)), fmap.max(axis=(2, 3))
    pooled = {"avg": gap, "max": gmp, "avgmax": gap + gmp}[pooling]
    weight = model.heads["high"].fc.weight.detach().numpy()
    np.testing.assert_allclose(out, pooled @ weight.T, rtol=1e-4, atol=1e-5)
    assert model.heads["high"].fc.bias is None  # the paper's FC has no bias


def test_head_bias_option() -> None:
    model = create_model("glyphnet", embedding_dim=16, head_bias=True)
    assert model.heads["high"].fc.bias is not None


def test_global_pool_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="pooling must be one of"):
        global_pool(torch.zeros(1, 2, 3, 3), "median")


def test_token_pooling_uses_the_class_token() -> None:
    model = create_model("vit_tiny_patch16_224", embedding_dim=8, pooling="token", img_size=32)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.backbone.model.forward_features(x)  # (B, 1 + N, C)
        out = model(x)["high"]
    weight = model.heads["high"].fc.weight
    torch.testing.assert_close(out, tokens[:, 0] @ weight.T, rtol=1e-4, atol=1e-5)

    # default "avg" pools the patch tokens only (the class token excluded)
    model = create_model("vit_tiny_patch16_224", embedding_dim=8, img_size=32).eval()
    with torch.no_grad():
        tokens = model.backbone.model.forward_features(x)
        out = model(x)["high"]
    ref = tokens[:, model.backbone.num_prefix_tokens :].mean(1) @ model.heads["high"].fc.weight.T
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_glyphnet_is_small() -> None:
    model = create_model("glyphnet", embedding_dim=512)
    n = sum(p.numel() for p in model.parameters())
    assert 300_000 <= n <= 1_000_000
    assert model.input_style == "glyphs" and model.input_size == 32
    assert model.backbone.channels == {"high": 256}
    ml = create_model("glyphnet", multi_level=True)
    assert ml.backbone.channels == {"low": 64, "mid": 128, "high": 256}
    # a 48 px input works too (the low/mid heads adapt to the grid fixed at 32 px)
    with torch.no_grad():
        out = ml.eval()(torch.randn(2, 3, 48, 48))
    assert all(v.shape == (2, 512) for v in out.values())


def test_glyphnet_channels_last_gives_the_same_result() -> None:
    fast = create_model("glyphnet", embedding_dim=16).eval()
    plain = create_model("glyphnet", embedding_dim=16, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)["high"], plain(x)["high"], rtol=1e-4, atol=1e-5)
