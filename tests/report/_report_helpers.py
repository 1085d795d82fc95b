"""Synthetic inputs for the report tests: clustered embeddings and a tiny image dataset.

A plain module (not conftest.py: several test folders have one, and ``import conftest`` would be
ambiguous) imported by the test files of this folder.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def clustered_embeddings(
    n_classes: int, per_class: int, dim: int = 16, noise: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised points around one random centre per class, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, dim))
    x = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


class FakeImageDataset:
    """What the report needs of a test dataset: ``load_image(i)``, ``classes`` and ``len``."""

    def __init__(self, labels: np.ndarray, size: int = 24) -> None:
        self.labels = np.asarray(labels)
        self.classes = [f"cls{c}" for c in range(int(self.labels.max()) + 1)]
        self.size = size
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, i: int) -> Image.Image:
        self.loaded.append(int(i))
        # Light grey with a darker square whose shade depends on the class: never green or red.
        shade = 60 + 25 * (int(self.labels[i]) % 6)
        img = Image.new("L", (self.size, self.size), 230)
        img.paste(shade, (6, 6, self.size - 6, self.size - 6))
        return img.convert("RGB")


def make_history(n_steps: int = 40) -> list[dict]:
    """Training records every step and a validation record every 10 steps, like the trainer's."""
    history: list[dict] = []
    for step in range(n_steps):
        history.append(
            {
                "step": step,
                "loss": 1.0 / (1 + step),
                "lr": 0.01 if step < 20 else 0.001,
                "active_pos": 2.0,
                "active_neg": 30.0 - step * 0.5,
                "nonzero_frac": 1.0 - step / 80,
                "images_per_s": 100.0 + step,
            }
        )
        if step % 10 == 9:
            history.append({"step": step, "val/recall@1": 0.5 + step / 100, "val/map@r": 0.3})
    return history


def make_metrics(ks: tuple[int, ...], base: float) -> dict[str, float]:
    metrics = {f"recall@{k}": min(1.0, base + 0.05 * i) for i, k in enumerate(ks)}
    metrics.update({"r_precision": base - 0.2, "map@r": base - 0.25, "nmi": base + 0.1})
    metrics["lone_queries"] = 0
    return metrics


def make_config(dataset: str, model: str = "bninception", multi_level: bool = False) -> dict:
    """A resolved config shaped like the trainer's ``Config.to_dict()``."""
    return {
        "description": "synthetic test run",
        "data": {"dataset": dataset, "root": "/nowhere", "p": 4, "k": 3, "options": {}},
        "model": {"name": model, "embedding_dim": 16, "multi_level": multi_level},
        "loss": {"name": "rll", "params": {"margin": 0.4, "alpha": 1.2, "Tn": 10.0}},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "schedule": {"name": "multistep", "milestones": [20], "gamma": 0.1},
        "train": {"iterations": 40, "seed": 0, "run_dir": "runs/x"},
    }


def brute_force_queries(
    x: np.ndarray, y: np.ndarray, query_count: int | None = None
) -> dict[int, tuple[float, int, int, list[int]]]:
    """Per query row with a relevant item, by a stable sort of float64 cosines (ties by row):
    (AP@R, first-correct rank, nearest gallery row, the ranked gallery rows)."""
    n = len(y)
    q_rows = range(n) if query_count is None else range(query_count)
    g_rows = np.arange(n) if query_count is None else np.arange(query_count, n)
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    out = {}
    for q in q_rows:
        cols = [g for g in g_rows if g != q]
        ranked = sorted(cols, key=lambda g: (-sims[q, g], g))
        rel = [y[g] == y[q] for g in ranked]
        r = sum(rel)
        if r == 0:
            continue
        hits, ap = 0, 0.0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        out[q] = (ap / r, rel.index(True), ranked[0], ranked)
    return out
