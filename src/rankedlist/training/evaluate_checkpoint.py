"""Re-evaluate a saved model on a split of its recipe's data (``rankedlist evaluate``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rankedlist.training import distributed as dist_utils
from rankedlist.training.checkpoint import load_checkpoint
from rankedlist.training.config import config_from_dict
from rankedlist.training.evaluation_pass import FUSED, QueryThenGallery, evaluate
from rankedlist.training.input_normalisation import checkpoint_normalisation
from rankedlist.training.recipe_data import (
    evaluation_split_names,
    get_split_dataset,
    protocol_name,
)
from rankedlist.training.run import build_model

__all__ = ["evaluate_checkpoint", "logged_history", "write_evaluation_report"]


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
    ``query_count``, ``protocol``, ``dataset`` (item ``i`` is row ``i``, for pictures) and
    ``config`` (the resolved config as a dict), e.g. to score them through an approximate index
    or to write a report (:func:`write_evaluation_report`).
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
        mean, std = checkpoint_normalisation(state, str(path))  # what its weights learnt with
        transform = build_transform(
            base.input_style, False, config.data.image_size or base.input_size, mean=mean, std=std
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
                dataset=query if gallery is None else QueryThenGallery(query, gallery),
                config=config.to_dict(),
            )  # fmt: skip
        return metrics
    finally:
        dist_utils.cleanup_distributed(ctx)


def write_evaluation_report(
    path: str | Path,
    metrics: dict[str, dict[str, float]],
    evaluated: dict[str, Any],
    split: str,
    history: list[dict[str, Any]] | tuple = (),
) -> Path:
    """Write ``report.html`` for an evaluation: ``metrics`` and ``evaluated`` (the
    ``embeddings_out`` dict) of :func:`evaluate_checkpoint`, ``history`` the run's logged records
    (its ``metrics.jsonl``) for the training curves.

    A page written into a run folder is written under the folder's lock (not while a training
    writes there) and added to the run's file list, so ``--overwrite`` clears it with the run
    and a later start does not refuse it as another program's file.
    """
    from rankedlist.folder_lock import folder_lock
    from rankedlist.report.html_page import write_html_report
    from rankedlist.training.run_folder import MANIFEST, register_run_files

    labels = evaluated["labels"]
    query_count = evaluated["query_count"]
    path = Path(path)
    folder = path.parent
    in_run = (folder / MANIFEST).is_file()
    with folder_lock(folder, "report", inside=True) if in_run else contextlib.nullcontext():
        written = write_html_report(
            path, config=evaluated["config"], history=list(history), test_metrics=metrics,
            protocol=evaluated["protocol"], embeddings=evaluated["embeddings"], labels=labels,
            dataset=evaluated["dataset"], split=split,
            query_count=None if query_count >= len(labels) else int(query_count),
        )  # fmt: skip
        if in_run:
            register_run_files(folder, [path.name])
    return written


def logged_history(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The records of the run folder's ``metrics.jsonl`` (the folder itself or the checkpoint's),
    ``[]`` when there is none; a line torn by a kill is skipped."""
    import json

    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
