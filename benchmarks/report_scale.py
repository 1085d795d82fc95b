"""The run report at Stanford Online Products' scale: time and size of ``write_report`` on a
synthetic test split of 60,502 items in 11,316 classes (SOP's test split), 512-d.

    python benchmarks/report_scale.py                 # SOP-sized, about 2-4 minutes on 2 cores
    python benchmarks/report_scale.py --items 6000 --classes 1100   # a quick look

Embeddings are clustered random vectors (one centre per class, Gaussian noise), the images small
generated pictures (a class colour and a per-item pattern), so the report does all its real work:
the exact evaluation of every query, the nearest neighbours of the queries whose first neighbour
is wrong, t-SNE of the map's sample, the PNGs and the thumbnails. On a shared machine seconds mean
little alone: the reference is ``retrieval_metrics`` on the same embeddings (the test metrics a
run computes before its report), timed in the same process, and the report's time is given as a
multiple of it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

NOISE = 2.2


class GeneratedImages:
    """``load_image(i)``: a 64 x 64 picture, its class's colour with an item's stripes."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.classes = [f"product {c:05d}" for c in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, i: int):
        from PIL import Image

        c = int(self.labels[i])
        colour = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256], dtype=np.uint8)
        pixels = np.broadcast_to(colour, (64, 64, 3)).copy()
        pixels[:, (i % 7) :: 8] = 255 - colour  # the item's stripes
        return Image.fromarray(pixels)


def synthetic_split(items: int, classes: int, dim: int, seed: int = 0):
    """``items`` L2-normalised embeddings in ``classes`` classes (each at least 2 items)."""
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, classes, items - 2 * classes)
    labels = np.sort(np.concatenate([np.arange(classes), np.arange(classes), extra]))
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    # Noise this strong leaves Recall@1 near 0.8, as a trained SOP model has: failures to show.
    x = centres[labels] + NOISE * rng.standard_normal((items, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=60_502, help="test items (SOP: 60,502)")
    parser.add_argument("--classes", type=int, default=11_316, help="classes (SOP: 11,316)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    args = parser.parse_args()

    from rankedlist.evaluation import retrieval_metrics
    from rankedlist.report import write_report

    x, labels = synthetic_split(args.items, args.classes, args.dim)
    t0 = time.perf_counter()
    metrics = retrieval_metrics(x, labels, ks=(1, 10, 100, 1000))
    reference = time.perf_counter() - t0
    history = [{"step": s, "loss": 1.0 / (1 + s), "lr": 1e-4} for s in range(0, 1000, 20)]
    config = {"data": {"dataset": "sop"}, "model": {"name": "resnet50"}, "loss": {"name": "rll"},
              "train": {"iterations": 1000}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = write_report(
            tmp, config=config, history=history, test_metrics={"fused": metrics},
            protocol="sop", embeddings=x, labels=labels, dataset=GeneratedImages(labels),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        sizes = {key: Path(path).stat().st_size for key, path in files.items()}
    print(f"{args.items:,} items, {args.classes:,} classes, {args.dim}-d; "
          f"Recall@1 {metrics['recall@1']:.3f}, MAP@R {metrics['map@r']:.3f}")  # fmt: skip
    print(f"reference: retrieval_metrics {reference:.1f} s")
    print(f"write_report (metrics.json, report.md, PNGs, report.html): {seconds:.1f} s "
          f"= {seconds / reference:.2f} x the reference")  # fmt: skip
    print(f"report.html {sizes['html'] / 1e6:.2f} MB; all files {sum(sizes.values()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
