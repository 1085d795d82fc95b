"""BN-Inception (GoogLeNet V2 with BatchNorm; Ioffe & Szegedy, ICML 2015), the paper's backbone.

Module names follow the Caffe model as converted to PyTorch by Cadene's ``pretrainedmodels``
(``bn_inception-52deb4733.pth``, the checkpoint used by Proxy-Anchor, MS-loss, XBM and most
deep-metric-learning code), so that file loads with exact key names: ``conv1_7x7_s2``,
``conv1_7x7_s2_bn``, ``inception_3a_1x1``, ``inception_3a_1x1_bn``, ..., ``inception_5b_pool_proj``.
Its classifier (``last_linear``) is ignored. The layers are registered flat, by name, from a
table of the blocks, rather than as nested modules, because the checkpoint's keys are flat.

Input convention of that checkpoint: BGR channel order, 0-255 range, minus the per-channel mean
(104, 117, 123), no std scaling (``input_style = "bninception"``); 227 px in the paper
(224 px works as well: both give a 7x7 map at inception_5b).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankedlist.models.pretrained import (
    LoadReport,
    download_state_dict,
    load_backbone_state_dict,
    read_state_dict,
)

__all__ = ["BNInception", "BNINCEPTION_URL"]

#: The standard ImageNet BN-Inception checkpoint (Caffe weights converted by Cadene).
BNINCEPTION_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"


class _Block(NamedTuple):
    """Channel counts of one inception block (0 = branch absent)."""

    name: str
    in_ch: int
    b1x1: int  # 1x1 branch
    b3x3_reduce: int
    b3x3: int
    double_reduce: int
    double: int  # both 3x3 convs of the double-3x3 branch
    pool: str  # "avg" (3x3/s1), "max" (3x3/s1, 5b only) or "max_s2" (reduction blocks)
    pool_proj: int  # 1x1 conv after the pool (0 for the reduction blocks)

    @property
    def stride(self) -> int:
        return 2 if self.pool == "max_s2" else 1

    @property
    def out_ch(self) -> int:
        pool_out = self.in_ch if self.pool_proj == 0 else self.pool_proj
        return self.b1x1 + self.b3x3 + self.double + pool_out


# Ioffe & Szegedy 2015, Figure 5 / Table 1 as realised in the Caffe model.
_BLOCKS = (
    _Block("inception_3a", 192, 64, 64, 64, 64, 96, "avg", 32),
    _Block("inception_3b", 256, 64, 64, 96, 64, 96, "avg", 64),
    _Block("inception_3c", 320, 0, 128, 160, 64, 96, "max_s2", 0),
    _Block("inception_4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    _Block("inception_4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    _Block("inception_4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    _Block("inception_4d", 608, 96, 128, 192, 160, 192, "avg", 128),
    _Block("inception_4e", 608, 0, 128, 192, 192, 256, "max_s2", 0),
    _Block("inception_5a", 1056, 352, 192, 320, 160, 224, "avg", 128),
    _Block("inception_5b", 1024, 352, 192, 320, 192, 224, "max", 128),
)

#: Which block output each level taps (RLL-(L,M,H) of Wang et al., Ranked List Loss,
#: CVPR 2019 / TPAMI 2021).
LEVEL_BLOCKS = {"low": "inception_3c", "mid": "inception_4e", "high": "inception_5b"}


class BNInception(nn.Module):
    """The BN-Inception feature extractor (no classifier), tapping low/mid/high stages.

    ``forward(x)`` returns ``{level: feature map}`` for the requested ``levels``:
    ``low`` = inception_3c (576 channels, stride 16), ``mid`` = inception_4e (1056 channels,
    stride 32), ``high`` = inception_5b (1024 channels, stride 32), as in RLL-(L,M,H).

    Args:
        levels: the levels to return, a subset of ``("low", "mid", "high")``.
        input_size: the nominal input size (227, the paper's crop; 224 also works).

    BatchNorm uses PyTorch's default momentum 0.1: the converted model's ``momentum=0.9`` is
    Caffe's moving-average fraction copied into PyTorch, where it means the opposite (each batch
    would replace 90% of the running statistics).
    """

    input_style = "bninception"
    #: BGR means on the 0-255 scale (the paper's released Caffe configs) and unit std.
    input_mean = (104.0, 117.0, 123.0)
    input_std = (1.0, 1.0, 1.0)

    def __init__(self, levels: tuple[str, ...] = ("high",), input_size: int = 227) -> None:
        super().__init__()
        unknown = set(levels) - set(LEVEL_BLOCKS)
        if not levels or unknown:
            raise ValueError(
                f"levels must be a non-empty subset of {tuple(LEVEL_BLOCKS)}, got {levels!r}"
            )
        self.levels = tuple(levels)
        self.input_size = int(input_size)
        self._taps = {LEVEL_BLOCKS[level]: level for level in self.levels}
        self.channels = {
            level: next(b.out_ch for b in _BLOCKS if b.name == LEVEL_BLOCKS[level])
            for level in self.levels
        }
        # Stem: 7x7/2 conv, 3x3/2 max pool, 1x1 conv, 3x3 conv, 3x3/2 max pool.
        self._conv_bn("conv1_7x7_s2", 3, 64, 7, stride=2)
        self._conv_bn("conv2_3x3_reduce", 64, 64, 1)
        self._conv_bn("conv2_3x3", 64, 192, 3)
        # Stop building after the deepest requested tap: unused blocks would only cost time.
        last = max(i for i, b in enumerate(_BLOCKS) if b.name in self._taps)
        self._blocks = _BLOCKS[: last + 1]
        for b in self._blocks:
            if b.b1x1:
                self._conv_bn(f"{b.name}_1x1", b.in_ch, b.b1x1, 1)
            self._conv_bn(f"{b.name}_3x3_reduce", b.in_ch, b.b3x3_reduce, 1)
            self._conv_bn(f"{b.name}_3x3", b.b3x3_reduce, b.b3x3, 3, stride=b.stride)
            self._conv_bn(f"{b.name}_double_3x3_reduce", b.in_ch, b.double_reduce, 1)
            self._conv_bn(f"{b.name}_double_3x3_1", b.double_reduce, b.double, 3)
            self._conv_bn(f"{b.name}_double_3x3_2", b.double, b.double, 3, stride=b.stride)
            if b.pool_proj:
                self._conv_bn(f"{b.name}_pool_proj", b.in_ch, b.pool_proj, 1)

    def _conv_bn(self, name: str, cin: int, cout: int, k: int, stride: int = 1) -> None:
        # Caffe convolutions carry a bias even though BatchNorm follows; the checkpoint has it.
        self.add_module(name, nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-5))

    def _cbr(self, name: str, x: Tensor) -> Tensor:
        bn: nn.Module = getattr(self, f"{name}_bn")
        conv: nn.Module = getattr(self, name)
        return F.relu(bn(conv(x)), inplace=True)

    def _block(self, b: _Block, x: Tensor) -> Tensor:
        n = b.name
        branches = []
        if b.b1x1:
            branches.append(self._cbr(f"{n}_1x1", x))
        branches.append(self._cbr(f"{n}_3x3", self._cbr(f"{n}_3x3_reduce", x)))
        y = self._cbr(f"{n}_double_3x3_reduce", x)
        branches.append(self._cbr(f"{n}_double_3x3_2", self._cbr(f"{n}_double_3x3_1", y)))
        if b.pool == "avg":
            # count_include_pad=True: Caffe divides border windows by the full 3x3 area.
            pooled = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
        elif b.pool == "max":
            pooled = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
        else:
            pooled = F.max_pool2d(x, 3, 2, ceil_mode=True)
        branches.append(self._cbr(f"{n}_pool_proj", pooled) if b.pool_proj else pooled)
        return torch.cat(branches, dim=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` BGR 0-255 mean-subtracted images -> ``{level: feature map}``."""
        x = self._cbr("conv1_7x7_s2", x)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)  # Caffe rounds pooled sizes up
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        out: dict[str, Tensor] = {}
        for b in self._blocks:
            x = self._block(b, x)
            if b.name in self._taps:
                out[self._taps[b.name]] = x
        return out

    def load_pretrained(
        self, path: str | None = None, model_name: str = "bninception"
    ) -> LoadReport:
        """Load the ImageNet checkpoint: from ``path``, or downloaded from
        :data:`BNINCEPTION_URL` (cached by torch hub) when ``path`` is None.

        Key names must match exactly (``last_linear.*`` is ignored; the checkpoint's ``(1, C)``
        BatchNorm vectors are reshaped). Blocks beyond the deepest requested level are not
        built, and their keys are ignored.

        Raises:
            PretrainedWeightsError: the download failed, or the file does not fit.
            FileNotFoundError: ``path`` does not exist.
        """
        if path is None:
            state, source = download_state_dict(BNINCEPTION_URL, model_name), BNINCEPTION_URL
        else:
            state, source = read_state_dict(path), str(path)
        unbuilt = tuple(b.name + "_" for b in _BLOCKS if b not in self._blocks)
        return load_backbone_state_dict(
            self, state, source, ignore_prefixes=("last_linear.", *unbuilt)
        )
