"""MultiLevelHead: Caffe-style 5x5/3 pooling (checked against a brute-force loop), the
small-map fallback, the whole head against a float64 reference, and the paper's layer structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankedlist.models import MultiLevelHead


def _caffe_avg_pool(x: np.ndarray, k: int = 5, s: int = 3) -> np.ndarray:
    """Brute-force Caffe average pooling (no padding, ceil rounding, border windows clipped
    and averaged over the cells inside the map)."""
    b, c, h, w = x.shape
    oh, ow = math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1
    out = np.zeros((b, c, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * s : min(i * s + k, h), j * s : min(j * s + k, w)]
            out[:, :, i, j] = win.mean(axis=(2, 3))
    return out


@pytest.mark.parametrize(
    ("size", "grid"), [((14, 14), (4, 4)), ((7, 7), (2, 2)), ((28, 28), (9, 9)), ((4, 4), (1, 1))]
)
def test_pooled_size(size: tuple[int, int], grid: tuple[int, int]) -> None:
    assert MultiLevelHead.pooled_size(size) == grid


@pytest.mark.parametrize("size", [14, 7, 8, 10])
def test_pool_matches_brute_force(size: int) -> None:
    head = MultiLevelHead(6, 4, map_size=(size, size))
    x = torch.randn(2, 6, size, size, dtype=torch.float64)
    np.testing.assert_allclose(head.pool(x).numpy(), _caffe_avg_pool(x.numpy()), rtol=1e-12)


def test_small_maps_fall_back_to_global_average() -> None:
    head = MultiLevelHead(6, 4, map_size=(3, 3))
    assert head.grid == (1, 1)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    np.testing.assert_allclose(
        head.pool(x).numpy()[..., 0, 0], x.numpy().mean(axis=(2, 3)), rtol=1e-12
    )


def _adaptive_avg_pool(x: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """Brute-force adaptive average pooling: output cell i averages input rows
    floor(i H / oh) .. ceil((i + 1) H / oh) - 1 (likewise columns), PyTorch's windows."""
    b, c, h, w = x.shape
    res = np.zeros((b, c, *out), dtype=np.float64)
    for i in range(out[0]):
        for j in range(out[1]):
            r0, r1 = (i * h) // out[0], -((-(i + 1) * h) // out[0])
            c0, c1 = (j * w) // out[1], -((-(j + 1) * w) // out[1])
            res[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return res


def _reference_head(head: MultiLevelHead, x: np.ndarray) -> np.ndarray:
    """The documented head in float64 numpy (eval mode): pool (Caffe 5x5/3, global average for
    maps under 5x5, then adaptive average to the grid) -> 1x1 conv -> BN -> ReLU -> flatten ->
    FC -> BN -> ReLU -> FC, with the head's own weights and running statistics."""

    def bn(v: np.ndarray, layer: torch.nn.modules.batchnorm._BatchNorm) -> np.ndarray:
        shape = (1, -1) + (1,) * (v.ndim - 2)
        mean, var, weight, bias = (
            t.detach().double().numpy().reshape(shape)
            for t in (layer.running_mean, layer.running_var, layer.weight, layer.bias)
        )
        return (v - mean) / np.sqrt(var + layer.eps) * weight + bias

    if min(x.shape[-2:]) < 5:
        pooled = x.mean(axis=(2, 3), keepdims=True)
    else:
        pooled = _caffe_avg_pool(x)
    if pooled.shape[-2:] != head.grid:
        pooled = _adaptive_avg_pool(pooled, head.grid)
    conv_w = head.conv.weight.detach().double().numpy()[:, :, 0, 0]
    h = np.maximum(bn(np.einsum("oc,bchw->bohw", conv_w, pooled), head.conv_bn), 0.0)
    h = h.reshape(h.shape[0], -1)  # channel-major, as torch's flatten
    h = np.maximum(bn(h @ head.fc1.weight.detach().double().numpy().T, head.fc1_bn), 0.0)
    return h @ head.fc2.weight.detach().double().numpy().T


@pytest.mark.parametrize("size", [14, 20, 9, 17, 3])
def test_other_input_sizes_keep_the_grid(size: int) -> None:
    # 14 pools straight to the 4x4 grid, 20 (6x6) and 17 (5x5) are averaged down to it, 9 (3x3)
    # is spread up to it, 3 is globally averaged first: all must match the float64 reference.
    torch.manual_seed(size)
    head = MultiLevelHead(8, 16, map_size=(14, 14), conv_channels=6, hidden_dim=12).double()
    for layer in (head.conv_bn, head.fc1_bn):  # non-trivial BN, so a skipped layer shows
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
        layer.weight.data.uniform_(0.5, 1.5)
        layer.bias.data.normal_()
    head.eval()
    x = torch.randn(3, 8, size, size, dtype=torch.float64)
    out = head(x)
    assert head.grid == (4, 4) and out.shape == (3, 16)
    np.testing.assert_allclose(
        out.detach().numpy(), _reference_head(head, x.numpy()), rtol=1e-10, atol=1e-12
    )


def test_structure_is_the_papers() -> None:
    head = MultiLevelHead(576, 512, map_size=(14, 14))
    assert head.conv.in_channels == 576 and head.conv.out_channels == 128
    assert head.conv.kernel_size == (1, 1) and head.conv.bias is None
    assert head.fc1.in_features == 128 * 4 * 4 and head.fc1.out_features == 1024
    assert head.fc1.bias is None and head.fc2.bias is None
    assert head.fc2.out_features == 512
    assert isinstance(head.conv_bn, torch.nn.BatchNorm2d)
    assert isinstance(head.fc1_bn, torch.nn.BatchNorm1d)
    # ReLU after both BNs: with BN in eval mode at identity stats, negative pre-activations of
    # fc1 must not reach fc2, so fc2's input is non-negative. Check via a hook.
    seen = []
    head.fc2.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    head.eval()(torch.randn(4, 576, 14, 14))
    assert (seen[0] >= 0).all() and (seen[0] == 0).any()
