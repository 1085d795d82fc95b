"""The embedding head: global pooling of a feature map, then a linear layer."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["POOLINGS", "global_pool", "EmbeddingHead"]

#: Global pooling modes. ``"avg"``: global average pooling (GAP, the paper); ``"max"``: global
#: max pooling (GMP); ``"avgmax"``: the SUM of GAP and GMP (as Proxy-Anchor's BN-Inception does;
#: not their mean, so a pretrained scale is kept for each part).
POOLINGS = ("avg", "max", "avgmax")


def global_pool(x: Tensor, mode: str = "avg") -> Tensor:
    """Pool a ``(B, C, H, W)`` map to ``(B, C)`` with one of :data:`POOLINGS`."""
    if mode == "avg":
        return x.mean(dim=(2, 3))
    if mode == "max":
        return x.amax(dim=(2, 3))
    if mode == "avgmax":
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
    raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")


class EmbeddingHead(nn.Module):
    """Global pooling then ``Linear(in_channels, embedding_dim)``: the paper's RLL-H head.

    The output is raw (not normalised): the loss normalises the embeddings itself and the test
    embedding is normalised after the heads are concatenated (``EmbeddingModel.fuse``).

    Args:
        in_channels: channels of the feature map.
        embedding_dim: output size.
        pooling: one of :data:`POOLINGS`.
        bias: give the linear layer a bias (the paper's FC has none).
    """

    def __init__(
        self, in_channels: int, embedding_dim: int, pooling: str = "avg", bias: bool = False
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim}")
        self.pooling = pooling
        self.fc = nn.Linear(in_channels, embedding_dim, bias=bias)
        # Kaiming (fan-out) init as in the Proxy-Anchor / PML embedders: keeps the initial
        # embedding spread independent of the backbone's width.
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        if bias:
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` feature map -> ``(B, embedding_dim)`` raw embedding."""
        return self.fc(global_pool(x, self.pooling))

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"
