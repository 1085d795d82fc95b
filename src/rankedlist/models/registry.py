"""The model registry: ``create_model(name, ...)``, ``list_models()``, ``register_model``.

A registered builder makes a BACKBONE; :func:`create_model` adds the embedding heads and wraps
both in an :class:`EmbeddingModel`. Names not in the registry are looked up in timm.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankedlist.models.bn_inception import BNInception
from rankedlist.models.embedding_head import POOLINGS, EmbeddingHead
from rankedlist.models.embedding_model import EmbeddingModel
from rankedlist.models.glyph_net import GlyphNet
from rankedlist.models.multi_level_head import MultiLevelHead
from rankedlist.models.pretrained import load_backbone_state_dict, read_state_dict

__all__ = ["create_model", "list_models", "register_model", "BackboneBuilder"]

#: ``builder(levels, pretrained, pretrained_path, **kwargs) -> backbone``. The backbone's
#: ``forward(x)`` returns ``{level: (B, C, H, W) map}`` for ``levels`` and it has the attributes
#: ``channels`` ({level: int}), ``input_style``, ``input_size``, ``input_mean``, ``input_std``.
BackboneBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, BackboneBuilder] = {}
_ALIASES = {"bn_inception": "bninception", "bn-inception": "bninception", "glyph_net": "glyphnet"}
_TIMM_PREFIXES = ("timm/", "timm:")
LEVELS_SINGLE = ("high",)
LEVELS_MULTI = ("low", "mid", "high")


def register_model(
    name: str, builder: BackboneBuilder | None = None
) -> Callable[[BackboneBuilder], BackboneBuilder] | BackboneBuilder:
    """Register a backbone builder under ``name`` (usable as a decorator).

    The builder is called as ``builder(levels=..., pretrained=..., pretrained_path=...,
    **kwargs)`` and must return a backbone as described by :data:`BackboneBuilder`.
    """
    key = name.lower()

    def add(fn: BackboneBuilder) -> BackboneBuilder:
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise ValueError(f"a model named {key!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    return add if builder is None else add(builder)


def list_models(include_timm: bool = False) -> list[str]:
    """Names of the registered models (``bninception``, ``glyphnet``, ...); with
    ``include_timm`` also every timm model name (any of which ``create_model`` accepts)."""
    names = sorted(_REGISTRY)
    if include_timm:
        import timm

        names += timm.list_models()
    return names


def _resolve(name: str) -> tuple[str, BackboneBuilder | None]:
    """(name to build, registered builder or None for timm)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"model name must be a non-empty string, got {name!r}")
    for prefix in _TIMM_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :], None
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _REGISTRY:
        return key, _REGISTRY[key]
    return name, None


def create_model(
    name: str,
    embedding_dim: int = 512,
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    pooling: str = "avg",
    freeze_bn: bool = False,
    multi_level: bool = False,
    head_bias: bool = False,
    head_conv_channels: int = 128,
    head_hidden_dim: int = 1024,
    **kwargs: Any,
) -> EmbeddingModel:
    """Build an :class:`EmbeddingModel` by name.

    Args:
        name: ``"bninception"``, ``"glyphnet"``, another registered name, or any timm model name
            (``"resnet50"``, ``"vit_small_patch16_224"``, with an optional ``"timm/"`` or
            ``"timm:"`` prefix and pretrained tag such as ``"resnet50.a1_in1k"``).
        embedding_dim: output size of each head.
        pretrained: download ImageNet weights (fails with a PretrainedWeightsError that says how
            to proceed when they cannot be fetched).
        pretrained_path: load the backbone weights from this local file instead.
        pooling: global pooling of the high head, ``"avg"`` (GAP), ``"max"`` (GMP),
            ``"avgmax"`` (GAP + GMP, summed), or ``"token"`` (the class token; ViT-style timm
            models only).
        freeze_bn: keep the backbone's BatchNorm statistics and affine parameters frozen.
        multi_level: three heads, ``low``/``mid``/``high`` (RLL-(L,M,H)); otherwise ``high``.
        head_bias: give the high head's linear layer a bias (the paper's has none).
        head_conv_channels, head_hidden_dim: the low/mid heads' 1x1 conv channels and hidden FC
            width (128 and 1024 in the paper).
        **kwargs: passed to the backbone builder (``input_size`` for bninception/glyphnet,
            ``widths`` for glyphnet, ``timm.create_model`` options such as ``img_size`` or
            ``drop_path_rate`` and ``out_indices`` for timm models).

    Raises:
        ValueError: unknown name (the message lists the available ones) or bad option.
        PretrainedWeightsError: weights could not be fetched or do not fit (a RuntimeError).
        FileNotFoundError: ``pretrained_path`` does not exist.
    """
    build_name, builder = _resolve(name)
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    token_pool = pooling == "token"
    if pooling not in POOLINGS and not token_pool:
        raise ValueError(f"pooling must be one of {(*POOLINGS, 'token')}, got {pooling!r}")
    levels = LEVELS_MULTI if multi_level else LEVELS_SINGLE
    if builder is None:
        from rankedlist.models.timm_backbone import TimmBackbone

        if not TimmBackbone.exists(build_name):
            raise ValueError(_unknown_model_message(name))
        backbone = TimmBackbone(
            build_name,
            levels=levels,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            token_pool=token_pool,
            **kwargs,
        )
    else:
        if token_pool:
            raise ValueError(
                f"pooling='token' needs a ViT-style timm model; {build_name!r} has no class token. "
                f"Use one of {POOLINGS}."
            )
        backbone = builder(
            levels=levels, pretrained=pretrained, pretrained_path=pretrained_path, **kwargs
        )

    heads: dict[str, nn.Module] = {}
    map_sizes = _map_sizes(backbone) if multi_level else {}
    for level in levels:
        if level == "high":
            heads[level] = EmbeddingHead(
                backbone.channels[level],
                embedding_dim,
                pooling="avg" if token_pool else pooling,
                bias=head_bias,
            )
        else:
            heads[level] = MultiLevelHead(
                backbone.channels[level],
                embedding_dim,
                map_size=map_sizes[level],
                conv_channels=head_conv_channels,
                hidden_dim=head_hidden_dim,
            )
    spec = dict(
        name=name,
        embedding_dim=embedding_dim,
        pooling=pooling,
        freeze_bn=freeze_bn,
        multi_level=multi_level,
        head_bias=head_bias,
        head_conv_channels=head_conv_channels,
        head_hidden_dim=head_hidden_dim,
        **kwargs,
    )
    return EmbeddingModel(backbone, heads, embedding_dim, freeze_bn=freeze_bn, spec=spec)


def _map_sizes(backbone: nn.Module) -> dict[str, tuple[int, int]]:
    """Feature-map sizes at the nominal input size: one eval-mode forward of a single image
    (the low/mid heads' FC input size depends on them; see MultiLevelHead)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            size = backbone.input_size
            feats = backbone(torch.zeros(1, 3, size, size))
    finally:
        backbone.train(was_training)
    return {level: (int(f.shape[-2]), int(f.shape[-1])) for level, f in feats.items()}


def _unknown_model_message(name: str) -> str:
    import timm

    candidates = list(_REGISTRY) + timm.list_models()
    close = difflib.get_close_matches(name.lower(), candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"Unknown model {name!r}. Available: {', '.join(sorted(_REGISTRY))}, or any timm model "
        f"name ({len(candidates) - len(_REGISTRY)} in timm {timm.__version__}; see "
        f"rankedlist.models.list_models(include_timm=True)), e.g. resnet50, "
        f"vit_small_patch16_224.{hint}"
    )


@register_model("bninception")
def _build_bninception(
    levels: tuple[str, ...] = LEVELS_SINGLE,
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    input_size: int = 227,
) -> BNInception:
    """BN-Inception; ``pretrained`` downloads the standard Caffe-converted ImageNet weights."""
    backbone = BNInception(levels=levels, input_size=input_size)
    if pretrained_path is not None:
        backbone.load_pretrained(str(pretrained_path))
    elif pretrained:
        backbone.load_pretrained(None)
    return backbone


@register_model("glyphnet")
def _build_glyphnet(
    levels: tuple[str, ...] = LEVELS_SINGLE,
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    **kwargs: Any,
) -> GlyphNet:
    """GlyphNet (no published weights: train from scratch, or load a local backbone file)."""
    if pretrained and pretrained_path is None:
        raise ValueError(
            "glyphnet has no downloadable pretrained weights; use pretrained=False (it trains "
            "from scratch in minutes) or pretrained_path=FILE with a saved GlyphNet state dict."
        )
    backbone = GlyphNet(levels=levels, **kwargs)
    if pretrained_path is not None:
        load_backbone_state_dict(backbone, read_state_dict(pretrained_path), str(pretrained_path))
    return backbone
