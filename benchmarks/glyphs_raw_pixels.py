"""The raw-pixel baseline on the embedded glyphs: no training, the demo's test split and metrics.

The floor a trained model must beat. The test split is loaded as the demo loads it
(``configs/glyphs.yaml``: ``rankedlist.data.get_dataset("glyphs", split="test", ...)`` rendered at
the recipe's image size, with the deterministic evaluation transform of the recipe's model,
``rankedlist.data.build_transform(model.input_style, False, image_size)``); each transformed image
is flattened into one vector of raw pixels and the vectors are evaluated exactly as a trained
model's embeddings are, with ``rankedlist.evaluation.evaluate_embeddings(..., protocol="glyphs")``
(cosine similarity of the L2-normalised vectors, each query against the rest of the test split,
seeded k-means for NMI). The numbers are deterministic; they are the ``"reference"`` row of
``rankedlist.report.published_results`` that every glyph report prints.

    python benchmarks/glyphs_raw_pixels.py                      # the demo's recipe
    python benchmarks/glyphs_raw_pixels.py --config configs/glyphs.yaml data.image_size=48
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "glyphs.yaml"


def raw_pixel_vectors(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every item of ``dataset`` as its transformed image flattened to a float32 row, in order."""
    rows, labels = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        rows.append(torch.as_tensor(image, dtype=torch.float32).reshape(-1).numpy())
        labels.append(int(label))
    return np.stack(rows), np.asarray(labels, dtype=np.int64)


def measure(
    config: str | Path = DEFAULT_CONFIG, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[dict[str, float | int], dict[str, object]]:
    """The raw-pixel metrics (fractions) of the recipe's glyph test split, and what was measured."""
    from rankedlist.data import build_transform, get_dataset
    from rankedlist.evaluation import evaluate_embeddings
    from rankedlist.models import create_model
    from rankedlist.training.config import load_config

    cfg = load_config(config, list(overrides))
    if cfg.data.dataset != "glyphs":
        raise ValueError(f"{config} trains on {cfg.data.dataset!r}, not on the glyphs")
    # The recipe's model only says which evaluation transform the demo uses; it is not run.
    model = create_model(cfg.model.name, embedding_dim=cfg.model.embedding_dim)
    image_size = cfg.data.image_size
    options = dict(cfg.data.options)
    options.setdefault("val_fraction", cfg.data.val_fraction)
    if image_size is not None:
        options.setdefault("image_size", image_size)  # rendered at the input size, as in training
    transform = build_transform(model.input_style, False, image_size)
    test = get_dataset("glyphs", root=cfg.data.root, split="test", transform=transform, **options)
    x, labels = raw_pixel_vectors(test)
    metrics = evaluate_embeddings(x, labels, protocol="glyphs")
    info = {
        "images": len(labels),
        "classes": len(np.unique(labels)),
        "dim": x.shape[1],
        "style": model.input_style,
        "image_size": image_size,
    }
    return metrics, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (demo: 2)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        metrics, info = measure(args.config, args.overrides)
    except ValueError as exc:
        parser.error(str(exc))
    seconds = time.perf_counter() - start

    command = shlex.join(["python", "benchmarks/glyphs_raw_pixels.py", *(argv or sys.argv[1:])])
    print(f"command: {command}")
    print(
        f"glyph test split: {info['images']} images, {info['classes']} classes (never seen in "
        f"training), {info['dim']} raw pixel values each ({info['style']} evaluation transform, "
        f"{info['image_size']} px); {seconds:.1f} s on {args.threads} threads\n"
    )
    print("| metric | fraction | percent |")
    print("|---|---:|---:|")
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"| {key} | {value:.4f} | {100 * value:.1f} |")
        else:
            print(f"| {key} | {value} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
