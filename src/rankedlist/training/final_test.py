"""The end of a run: the test split evaluated once with the dataset's protocol, then
``metrics.json`` and (unless ``train.report`` is off) the report with its pictures."""

from __future__ import annotations

import json

from rankedlist import __version__
from rankedlist.atomic_write import atomic_write_text
from rankedlist.training.evaluation_pass import (
    FUSED,
    QueryThenGallery,
    evaluate,
    format_metrics_table,
)
from rankedlist.training.recipe_data import (
    evaluation_split_names,
    get_split_dataset,
    protocol_name,
    record_skipped_images,
)
from rankedlist.training.run import Run
from rankedlist.training.run_folder import SKIPPED_FILE
from rankedlist.training.run_log import RunLog

__all__ = ["test_and_report"]


def test_and_report(run: Run, log: RunLog) -> tuple[dict[str, dict[str, float]], dict]:
    """Evaluate the test split once with the dataset's protocol; write metrics and the report."""
    config = run.config
    protocol = protocol_name(config)
    query_split, gallery_split = evaluation_split_names(config, "test")
    query = get_split_dataset(config, query_split, run.eval_transform, quiet_skips=True)
    gallery = (
        get_split_dataset(config, gallery_split, run.eval_transform, quiet_skips=True)
        if gallery_split
        else None
    )
    if run.ctx.is_main:
        for split, dataset in ((query_split, query), (gallery_split, gallery)):
            if dataset is None:
                continue
            if note := record_skipped_images(dataset, split, run.run_dir / SKIPPED_FILE):
                log.message(note)
    metrics, embeddings, labels = evaluate(run.model, query, gallery, protocol, run.ctx, config)
    if not run.ctx.is_main:
        return metrics, {}
    log.write(run.iteration, metrics[FUSED], "test")
    log.close()
    title = f"test metrics ({protocol} protocol, {len(labels)} images):"
    log.message("\n".join([title, *format_metrics_table(metrics)]))
    if not config.train.report:
        heads = {k: v for k, v in metrics.items() if k != FUSED}
        path = run.run_dir / "metrics.json"
        payload = {"test": metrics[FUSED], "heads": heads, "config": config.to_dict()}
        atomic_write_text(path, json.dumps({**payload, "rankedlist_version": __version__}))
        return metrics, {"metrics": path}
    from rankedlist.report import write_report

    files = write_report(
        run.run_dir,
        config=config.to_dict(),
        history=log.records(),
        test_metrics=metrics,
        protocol=protocol,
        embeddings=embeddings[FUSED],
        labels=labels,
        dataset=query if gallery is None else QueryThenGallery(query, gallery),
        query_count=None if gallery is None else len(query),
    )
    return metrics, files
