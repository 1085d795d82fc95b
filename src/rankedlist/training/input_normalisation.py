"""The input normalisation a run feeds its model with, recorded in its checkpoints.

The ``imagenet`` pipeline normalises with the model's own ``input_mean``/``input_std`` (what its
weights were trained with). Before it did, it always used ImageNet's, so a checkpoint says which
one its weights learnt with: ``state["input_normalisation"] = {"mean": [...], "std": [...]}``
(``imagenet`` models only; the other styles fix their own). A checkpoint without it was written
before, with ImageNet's: it keeps being fed ImageNet's, when evaluated, exported or resumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NORMALISATION_KEY", "checkpoint_normalisation", "model_normalisation"]

NORMALISATION_KEY = "input_normalisation"

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]


def model_normalisation(model: Any) -> Normalisation:
    """``(mean, std)`` of a new run's ``imagenet`` pipeline: the model's own (ImageNet's when it
    reports none)."""
    from rankedlist.data.transforms import normalisation

    return normalisation(getattr(model, "input_mean", None), getattr(model, "input_std", None))


def checkpoint_normalisation(state: Mapping[str, Any], where: str) -> Normalisation:
    """``(mean, std)`` the weights of checkpoint ``state`` (read from ``where``) learnt with:
    the recorded one, else ImageNet's (a checkpoint from before the record)."""
    from rankedlist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalisation

    recorded = state.get(NORMALISATION_KEY)
    if recorded is None:
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        return normalisation(recorded["mean"], recorded["std"])
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(
            f"checkpoint {where} records a damaged input normalisation ({recorded!r}): it was "
            "not written by `rankedlist train`, or was changed; copy it again from the run"
        ) from err
