"""The low- and mid-level embedding heads of RLL-(L,M,H) (Wang et al., Ranked List Loss,
CVPR 2019 / TPAMI 2021, and its released code)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiLevelHead"]


class MultiLevelHead(nn.Module):
    """Embedding head for an intermediate stage, GoogLeNet-auxiliary-classifier style.

    average pool 5x5 stride 3 -> 1x1 conv to ``conv_channels`` + BN + ReLU -> flatten ->
    FC ``hidden_dim`` + BN + ReLU -> FC ``embedding_dim``; no layer has a bias (the paper).
    The output is raw (not normalised).

    Spatial sizes. The pooling uses Caffe's ceil rounding (the paper's code is Caffe), so a
    14x14 map (BN-Inception inception_3c at 224/227 px) pools to 4x4 and a 7x7 map
    (inception_4e) to 2x2. A map smaller than the 5x5 window (small inputs, e.g. glyphs) is
    average-pooled to 1x1 instead. The first FC needs a fixed input size, so the pooled grid is
    fixed at construction from the map size the backbone gives at its nominal input size
    (``map_size``); at other input sizes the pooled map is adaptively average-pooled to that grid.

    Args:
        in_channels: channels of the feature map.
        embedding_dim: output size.
        map_size: ``(H, W)`` of the feature map at the backbone's nominal input size.
        conv_channels: channels of the 1x1 convolution (128 in the paper).
        hidden_dim: width of the hidden FC layer (1024 in the paper).
        kernel_size, stride: the average pooling window (5 and 3 in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        embedding_dim: int,
        map_size: tuple[int, int],
        conv_channels: int = 128,
        hidden_dim: int = 1024,
        kernel_size: int = 5,
        stride: int = 3,
    ) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.grid = self.pooled_size(map_size, kernel_size, stride)
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=1, bias=False)
        self.conv_bn = nn.BatchNorm2d(conv_channels)
        flat = conv_channels * self.grid[0] * self.grid[1]
        self.fc1 = nn.Linear(flat, hidden_dim, bias=False)
        self.fc1_bn = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embedding_dim, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, mode="fan_out")

    @staticmethod
    def pooled_size(
        map_size: tuple[int, int], kernel_size: int = 5, stride: int = 3
    ) -> tuple[int, int]:
        """Size of the pooled map for an input map of ``map_size`` (Caffe ceil rounding;
        ``(1, 1)`` when the map is smaller than the window)."""
        h, w = map_size
        if min(h, w) < kernel_size:
            return (1, 1)
        return tuple(math.ceil((s - kernel_size) / stride) + 1 for s in (h, w))  # type: ignore[return-value]

    def pool(self, x: Tensor) -> Tensor:
        """The head's spatial pooling, ``(B, C, H, W) -> (B, C, *self.grid)``."""
        if min(x.shape[-2:]) < self.kernel_size:
            x = F.adaptive_avg_pool2d(x, 1)
        else:
            x = F.avg_pool2d(x, self.kernel_size, self.stride, ceil_mode=True)
        if tuple(x.shape[-2:]) != self.grid:
            x = F.adaptive_avg_pool2d(x, self.grid)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` feature map -> ``(B, embedding_dim)`` raw embedding."""
        x = F.relu(self.conv_bn(self.conv(self.pool(x))), inplace=True)
        x = F.relu(self.fc1_bn(self.fc1(x.flatten(1))), inplace=True)
        return self.fc2(x)

    def extra_repr(self) -> str:
        return f"pool={self.kernel_size}x{self.kernel_size}/s{self.stride} -> grid={self.grid}"
