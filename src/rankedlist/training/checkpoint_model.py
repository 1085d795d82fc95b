"""A training run's checkpoint -> its model, in eval mode, with its test-time transform."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointModel",
    "load_model_from_checkpoint",
    "resolve_checkpoint",
    "resolve_device",
]


@dataclass
class CheckpointModel:
    """A trained model rebuilt from a checkpoint, with its test-time transform.

    ``config`` is the run's resolved config as a plain dict, ``image_size`` the side the
    transform resizes to (``data.image_size`` of the run, else the model's ``input_size``),
    ``input_mean``/``input_std`` the ``imagenet`` pipeline's normalisation (RGB, 0-1 scale) the
    weights learnt with (see :mod:`rankedlist.training.input_normalisation`).
    """

    model: nn.Module
    transform: Callable
    image_size: int
    checkpoint: Path
    config: dict[str, Any] = field(default_factory=dict)
    iteration: int | None = None
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A ``.pt`` file as given; a run folder means its ``best.pt`` (the model selected on the
    val split, which the run's test numbers used) or, without one, its ``last.pt``."""
    path = Path(checkpoint)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run folder {path} holds neither best.pt nor last.pt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass a .pt file or a run folder")
    return path


def load_model_from_checkpoint(
    checkpoint: str | os.PathLike, device: str = "auto"
) -> CheckpointModel:
    """Rebuild a run's model from its checkpoint, in eval mode on ``device``.

    The checkpoint (written by the trainer, ``rankedlist.training.save_checkpoint``) holds the
    resolved config under ``"config"`` and the model's ``state_dict`` under ``"model"``; the
    model is built from the config's ``model`` section exactly as the trainer builds it (without
    fetching pretrained weights: the checkpoint has them all).
    """
    from rankedlist.data import build_transform
    from rankedlist.training.checkpoint import load_checkpoint
    from rankedlist.training.config import config_from_dict
    from rankedlist.training.input_normalisation import checkpoint_normalisation
    from rankedlist.training.run import build_model

    path = resolve_checkpoint(checkpoint)
    try:
        state = load_checkpoint(path, map_location="cpu")
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except ValueError as err:
        if str(path) in str(err):  # already names the file and says what is wrong
            raise
        raise _unreadable(path, err) from err
    except Exception as err:  # torch.load raises many types for a damaged zip/pickle
        raise _unreadable(path, err) from err
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(
            f"checkpoint {path} has no 'config' entry: it was not written by `rankedlist train`; "
            "pass a run folder or its best.pt / last.pt"
        )
    try:
        config = config_from_dict(state["config"])
        model = build_model(config, load_pretrained=False)  # the checkpoint has every weight
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"the config stored in checkpoint {path} cannot be rebuilt ({_first_line(err)}): it "
            "is damaged or from an incompatible rankedlist version"
        ) from err
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(
            f"the weights in checkpoint {path} do not fit its config's model: {_first_line(err)}"
        ) from err
    model.to(resolve_device(device)).eval()
    image_size = int(config.data.image_size or model.input_size)
    # The normalisation its weights learnt with (ImageNet's for a checkpoint from before the
    # imagenet pipeline followed the model's own).
    mean, std = checkpoint_normalisation(state, str(path))
    transform = build_transform(model.input_style, False, image_size, mean=mean, std=std)
    return CheckpointModel(
        model=model,
        transform=transform,
        image_size=image_size,
        checkpoint=path,
        config=config.to_dict(),
        iteration=state.get("iteration"),
        input_mean=mean,
        input_std=std,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unreadable(path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"checkpoint {path} is not a readable rankedlist checkpoint (truncated, empty or another "
        f"kind of file: {type(err).__name__}: {_first_line(err)}); pass a run folder or its "
        "best.pt / last.pt as written by `rankedlist train`, or copy the file again if a copy was "
        "cut short"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from err
