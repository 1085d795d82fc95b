"""MultiLevelHead: Caffe-style 5x5/3 pooling (checked against a brute-force loop), the
small-map fallback, and the layer structure of protocols.md section 3."""

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


def test_other_input_sizes_keep_the_grid() -> None:
    head = MultiLevelHead(8, 16, map_size=(14, 14)).eval()
    for size in (14, 20, 9, 3):
        out = head(torch.randn(3, 8, size, size))
        assert out.shape == (3, 16)


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
