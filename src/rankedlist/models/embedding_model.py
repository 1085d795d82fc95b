"""EmbeddingModel: a backbone plus one (RLL-H) or three (RLL-(L,M,H)) embedding heads."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["EmbeddingModel"]


class EmbeddingModel(nn.Module):
    """Backbone + embedding heads; the model every loss, trainer and evaluator works with.

    ``forward(x)`` returns the RAW head outputs, ``{"high": (B, D)}`` or
    ``{"low": (B, D), "mid": (B, D), "high": (B, D)}``: each head is trained with its own loss,
    which normalises the embeddings itself. ``fuse(outputs)`` is the test-time embedding: the
    raw heads concatenated in :attr:`head_names` order, then L2-normalised (RLL-(L,M,H),
    Wang et al., Ranked List Loss, CVPR 2019 / TPAMI 2021); ``embed(x) = fuse(forward(x))``.

    Args:
        backbone: a module whose ``forward(x)`` returns ``{level: (B, C, H, W) map}`` for every
            head name, and which carries ``input_style``, ``input_size``, ``input_mean`` and
            ``input_std`` attributes.
        heads: ``{level: head module}`` in fusion order (low, mid, high).
        embedding_dim: the output size of each head.
        freeze_bn: keep the backbone's BatchNorm layers in eval mode (running statistics
            frozen) even in ``train()``, and their affine parameters fixed.
        spec: the ``create_model`` arguments that rebuild this model (saved in checkpoints).

    Attributes:
        input_style: the ``rankedlist.data.build_transform`` style (``"bninception"``,
            ``"imagenet"`` or ``"glyphs"``).
        input_size: the nominal square input size in pixels.
        input_mean, input_std: per-channel normalisation of the backbone's weights (None when
            the transform style defines it).
        head_names: the heads in fusion order.
        embedding_dim: the size of each head's output; ``fused_dim`` that of ``fuse``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Mapping[str, nn.Module],
        embedding_dim: int,
        freeze_bn: bool = False,
        spec: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("an EmbeddingModel needs at least one head")
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))
        self.head_names: tuple[str, ...] = tuple(heads)
        self.embedding_dim = int(embedding_dim)
        self.input_style: str = backbone.input_style
        self.input_size: int = int(backbone.input_size)
        self.input_mean = getattr(backbone, "input_mean", None)
        self.input_std = getattr(backbone, "input_std", None)
        self.spec = dict(spec or {})
        self.freeze_bn = bool(freeze_bn)
        if self.freeze_bn:
            for m in self._backbone_bns():
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
            self.train(self.training)

    @property
    def fused_dim(self) -> int:
        """Size of the fused (test-time) embedding: ``embedding_dim * len(head_names)``."""
        return self.embedding_dim * len(self.head_names)

    def _backbone_bns(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, _BatchNorm)]

    def train(self, mode: bool = True) -> EmbeddingModel:
        """Set train/eval mode; with ``freeze_bn`` the backbone's BatchNorms stay in eval mode
        (so their running statistics are neither used for normalisation nor updated)."""
        super().train(mode)
        if self.freeze_bn:
            for m in self._backbone_bns():
                m.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Images ``(B, 3, H, W)`` -> ``{head name: raw (B, embedding_dim) embedding}``."""
        features = self.backbone(x)
        return {name: self.heads[name](features[name]) for name in self.head_names}

    def fuse(self, outputs: Mapping[str, Tensor] | Tensor) -> Tensor:
        """The test-time embedding: raw heads concatenated in ``head_names`` order, then
        L2-normalised. A single tensor is just normalised."""
        if isinstance(outputs, Tensor):
            return F.normalize(outputs, dim=1)
        missing = [n for n in self.head_names if n not in outputs]
        if missing:
            raise ValueError(
                f"fuse needs the outputs of every head {self.head_names}; missing {missing}"
            )
        return F.normalize(torch.cat([outputs[n] for n in self.head_names], dim=1), dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """``fuse(forward(x))``: L2-normalised ``(B, fused_dim)`` embeddings."""
        return self.fuse(self.forward(x))

    def parameter_groups(self, trainable_only: bool = False) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": [...], "new": [...]}``: pretrained backbone parameters and the new
        (head) layers, for learning-rate multipliers (10x / 100x on the new layers in the
        paper). The two lists partition ``self.parameters()``; with ``trainable_only`` the
        parameters with ``requires_grad=False`` (frozen BatchNorm affines) are left out."""

        def keep(params: list[nn.Parameter]) -> list[nn.Parameter]:
            return [p for p in params if p.requires_grad] if trainable_only else params

        return {
            "backbone": keep(list(self.backbone.parameters())),
            "new": keep(list(self.heads.parameters())),
        }

    def extra_repr(self) -> str:
        return (
            f"head_names={self.head_names}, embedding_dim={self.embedding_dim}, "
            f"input_style={self.input_style!r}, input_size={self.input_size}, "
            f"freeze_bn={self.freeze_bn}"
        )
