"""Shared inputs for the retrieval tests: a folder of generated images and a tiny checkpoint.

A plain module (not conftest.py: several test folders have one, and ``import conftest`` would be
ambiguous) imported by the test files of this folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rankedlist.models import create_model
from rankedlist.training import config_from_dict, save_checkpoint

#: The tiny model of the checkpoint tests: GlyphNet with narrow blocks and 16-d embeddings.
MODEL_SECTION = {"name": "glyphnet", "embedding_dim": 16, "options": {"widths": [4, 8, 8, 16]}}


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """``root/class_c/img_i.png``: each class a different base colour plus noise, varied sizes."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        for i in range(per_class):
            h, w = rng.integers(24, 48, size=2)
            noise = rng.integers(-40, 40, size=(h, w, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return root


def write_checkpoint(path: Path, seed: int = 0) -> tuple[Path, torch.nn.Module, dict]:
    """A checkpoint in the trainer's weights-only format (``Run.state_dict(weights_only=True)``:
    model, losses, config, iteration, best, world_size), written by the trainer's own
    ``save_checkpoint``. Returns the path, the model (eval mode) and the config dict."""
    config = config_from_dict({"model": MODEL_SECTION, "data": {"image_size": 32}}).to_dict()
    torch.manual_seed(seed)
    model = create_model(MODEL_SECTION["name"], embedding_dim=16, **MODEL_SECTION["options"])
    # Non-trivial BatchNorm statistics, so eval mode matters and a wrong rebuild shows.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    state = {
        "model": model.state_dict(),
        "losses": {},
        "config": config,
        "iteration": 3,
        "best": {"metric": "recall@1", "value": None, "iteration": None},
        "world_size": 1,
    }
    save_checkpoint(state, path)
    return path, model.eval(), config


def clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in hierarchical clusters and their class labels: groups of about 1000
    (centres N(0, I)), classes of about 5 around them (+ N(0, I)), items around their class
    (+ 0.7 N(0, I)); the structure of trained embeddings and of benchmarks/index_speed.py."""
    rng = np.random.default_rng(seed)
    groups, classes = max(1, n // 1000), max(1, n // 5)
    centres = rng.standard_normal((groups, dim))[rng.integers(0, groups, classes)]
    centres += rng.standard_normal((classes, dim))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def listing(folder: Path) -> list[str]:
    """The names in ``folder``, sorted, without the index locks (``.NAME.lock``: the lock file
    of ``rankedlist.folder_lock`` stays beside the folder it locks, by design)."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.endswith(".lock"))
