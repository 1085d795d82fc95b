"""Any timm model as a feature extractor (CNNs, ViTs, Swin, ...)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from rankedlist.models.pretrained import (
    PretrainedWeightsError,
    check_state_dict,
    read_state_dict,
    weights_unavailable_error,
)

__all__ = ["TimmBackbone"]

_LEVELS = ("low", "mid", "high")


class TimmBackbone(nn.Module):
    """A timm model without its classifier, returning ``{level: (B, C, H, W) map}``.

    Single level (``levels=("high",)``): ``timm.create_model(name, num_classes=0,
    global_pool="")`` and its ``forward_features``; token outputs (ViT: ``(B, N, C)``) become a
    ``(B, C, N', 1)`` map of the patch tokens (prefix tokens dropped), or with
    ``token_pool=True`` the class token as a ``(B, C, 1, 1)`` map; NHWC outputs (Swin) are
    permuted. Multi-level: ``features_only=True`` with ``out_indices`` (default the last three
    stages: low, mid, high).

    Args:
        name: a timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``).
        levels: a subset of ``("low", "mid", "high")``.
        pretrained: download the weights (timm: Hugging Face hub or URL).
        pretrained_path: a local checkpoint of this architecture to load instead.
        token_pool: use the class token (ViT-style models) instead of pooling the patches.
        out_indices: feature indices for low/mid/high when multi-level.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=64``,
            ``drop_path_rate=0.1``).

    Raises:
        PretrainedWeightsError: the weights could not be fetched or do not fit.
    """

    input_style = "imagenet"

    def __init__(
        self,
        name: str,
        levels: tuple[str, ...] = ("high",),
        pretrained: bool = False,
        pretrained_path: str | Path | None = None,
        token_pool: bool = False,
        out_indices: tuple[int, ...] = (-3, -2, -1),
        **timm_kwargs: object,
    ) -> None:
        super().__init__()
        import timm

        if not levels or set(levels) - set(_LEVELS):
            raise ValueError(f"levels must be a non-empty subset of {_LEVELS}, got {levels!r}")
        self.name = name
        self.levels = tuple(levels)
        self.multi_level = self.levels != ("high",)
        self.token_pool = token_pool
        if self.multi_level:
            if len(out_indices) != 3:
                raise ValueError(
                    f"out_indices must give 3 feature indices (low, mid, high), got {out_indices}"
                )
            if token_pool:
                raise ValueError("token_pool applies to the single-level (high) head only")
            kwargs = dict(features_only=True, out_indices=tuple(out_indices), **timm_kwargs)
        else:
            kwargs = dict(num_classes=0, global_pool="", **timm_kwargs)
        self.model = self._create(timm, name, pretrained, pretrained_path, kwargs, timm_kwargs)

        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        img_size = timm_kwargs.get("img_size")
        size = img_size if img_size is not None else cfg.get("input_size", (3, 224, 224))[-1]
        self.input_size = int(size[-1] if isinstance(size, (tuple, list)) else size)
        self.input_mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.input_std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))

        if self.multi_level:
            chans = self.model.feature_info.channels()
            self.channels = {lv: int(c) for lv, c in zip(_LEVELS, chans, strict=True)}
            self.channels = {lv: self.channels[lv] for lv in self.levels}
            self.num_prefix_tokens = 0
        else:
            self.channels = {"high": int(self.model.num_features)}
            self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
            if token_pool and self.num_prefix_tokens == 0:
                raise ValueError(
                    f"token_pool=True needs a model with a class token (a ViT); {name!r} has none. "
                    f"Use pooling 'avg', 'max' or 'avgmax'."
                )

    @staticmethod
    def _create(
        timm: object,
        name: str,
        pretrained: bool,
        pretrained_path: str | Path | None,
        kwargs: dict[str, object],
        timm_kwargs: dict[str, object],
    ) -> nn.Module:
        create = timm.create_model  # type: ignore[attr-defined]
        if pretrained_path is not None:
            state = read_state_dict(pretrained_path)  # FileNotFoundError / unreadable first
            # timm loads classifier-less models with strict=False and only logs what it
            # skipped, so check the key names first against the plain model. Shapes are left
            # to timm, whose checkpoint filters adapt some (position embeddings).
            plain = create(name, pretrained=False, num_classes=0, global_pool="", **timm_kwargs)
            classifier = (getattr(plain, "pretrained_cfg", None) or {}).get("classifier") or ()
            if isinstance(classifier, str):
                classifier = (classifier,)
            check_state_dict(
                plain.state_dict(),
                state,
                str(pretrained_path),
                ignore_prefixes=tuple(f"{c}." for c in classifier),
                check_shapes=False,
            )
            try:
                # timm loads the file itself so that its checkpoint filters apply, before the
                # features_only wrapping renames modules.
                return create(
                    name,
                    pretrained=True,
                    pretrained_cfg_overlay=dict(file=str(pretrained_path), source="timm"),
                    **kwargs,
                )
            except RuntimeError as error:
                raise PretrainedWeightsError(
                    f"timm could not load {pretrained_path} into {name!r}: {error}"
                ) from error
        if pretrained:
            try:
                return create(name, pretrained=True, **kwargs)
            except TypeError:  # a bad timm option, not a download failure
                raise
            except Exception as error:  # noqa: BLE001 - any failure means "weights unavailable"
                raise weights_unavailable_error(name, _weights_source(name), error) from error
        return create(name, pretrained=False, **kwargs)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` images -> ``{level: (B, C, H', W') map}``."""
        if self.multi_level:
            feats = self.model(x)
            return {lv: f for lv, f in zip(_LEVELS, feats, strict=True) if lv in self.levels}
        y = self.model.forward_features(x)
        if y.ndim == 3:  # tokens (B, N, C)
            if self.token_pool:
                y = y[:, :1]
            else:
                y = y[:, self.num_prefix_tokens :]
            return {"high": y.transpose(1, 2).unsqueeze(-1)}
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            y = y.permute(0, 3, 1, 2)
        return {"high": y}

    @staticmethod
    def exists(name: str) -> bool:
        """Whether ``name`` (with an optional pretrained tag) is a timm model."""
        import timm

        return bool(timm.is_model(name))


def _weights_source(name: str) -> str:
    """Where timm fetches ``name``'s weights, for the error message."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - only used to word an error message
        cfg = None
    if cfg is not None and cfg.hf_hub_id:
        return f"the Hugging Face hub (https://huggingface.co/{cfg.hf_hub_id})"
    if cfg is not None and cfg.url:
        return cfg.url
    return "the Hugging Face hub / timm"
