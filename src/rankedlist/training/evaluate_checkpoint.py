"""Re-evaluate a saved model on a split of its recipe's data (``rankedlist evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rankedlist.training import distributed as dist_utils
from rankedlist.training.checkpoint import load_checkpoint
from rankedlist.training.config import config_from_dict
from rankedlist.training.evaluation_pass import FUSED, evaluate
from rankedlist.training.recipe_data import (
    evaluation_split_names,
    get_split_dataset,
    protocol_name,
)
from rankedlist.training.run import build_model

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    embeddings_out: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Re-evaluate a saved model on a split (``test``, ``val`` or ``train``) of its recipe's data.

    ``overrides`` are ``key=value`` strings applied to the saved config (e.g. ``data.root=...``).
    Returns ``{"fused": metrics, head: metrics, ...}``. When ``embeddings_out`` is a dict it
    receives ``embeddings`` (the fused ones; queries then gallery), ``labels``,
    ``query_count`` and ``protocol``, e.g. to score them through an approximate index.
    """
    from rankedlist.data import build_transform
    from rankedlist.training.config import apply_overrides

    state = load_checkpoint(path)
    config = apply_overrides(config_from_dict(state["config"]), list(overrides))
    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r} is unknown; choose test, val or train")
    if split == "val" and config.data.val_fraction == 0:
        raise ValueError(
            "this run has no val split (data.val_fraction = 0); pass data.val_fraction=F to "
            "carve one from the training classes as a training run with that value would"
        )
    ctx = dist_utils.init_distributed(device)
    try:
        model = build_model(config, load_pretrained=False)
        model.load_state_dict(state["model"])
        model = dist_utils.wrap_model(model, ctx)
        base = dist_utils.unwrap_model(model)
        transform = build_transform(
            base.input_style, False, config.data.image_size or base.input_size
        )
        query_split, gallery_split = evaluation_split_names(config, split)
        query = get_split_dataset(config, query_split, transform)
        gallery = get_split_dataset(config, gallery_split, transform) if gallery_split else None
        protocol = protocol_name(config) if split == "test" else "default"
        metrics, embeddings, labels = evaluate(model, query, gallery, protocol, ctx, config)
        if embeddings_out is not None:
            embeddings_out.update(
                embeddings=embeddings[FUSED], labels=labels, protocol=protocol,
                query_count=len(query) if gallery is not None else len(labels),
            )  # fmt: skip
        return metrics
    finally:
        dist_utils.cleanup_distributed(ctx)
