"""Shared inputs of the export tests: run checkpoints of the three model families, real glyph
images, and the parity measure (a plain module, imported by the test files of this folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rankedlist.models import create_model
from rankedlist.training import config_from_dict, save_checkpoint

#: The three families of the issue, small enough for a CPU test: GlyphNet and BN-Inception with
#: the multi-level heads (RLL-(L,M,H)), a timm ResNet. (model section, data.image_size)
MODELS = {
    "glyphnet": (
        {
            "name": "glyphnet",
            "embedding_dim": 16,
            "multi_level": True,
            "options": {"widths": [4, 8, 8, 16]},
        },
        32,
    ),
    "bninception": (
        {
            "name": "bninception",
            "embedding_dim": 16,
            "multi_level": True,
            "options": {"input_size": 96},
        },
        96,
    ),  # fmt: skip
    "resnet": ({"name": "resnet10t", "embedding_dim": 16, "options": {}}, 64),
}
MIN_COSINE = 0.9999
MAX_ABS_DIFF = 1e-4


def write_run(folder: Path, name: str, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """``folder/best.pt`` in the trainer's format for model ``name``; returns it and the model
    (eval mode). BatchNorm statistics are randomised so that eval mode matters."""
    section, size = MODELS[name]
    config = config_from_dict({"model": section, "data": {"image_size": size}}).to_dict()
    torch.manual_seed(seed)
    model = create_model(
        section["name"],
        embedding_dim=section["embedding_dim"],
        multi_level=section.get("multi_level", False),
        **section["options"],
    )
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    state = {"model": model.state_dict(), "losses": {}, "config": config, "iteration": 7,
             "best": {}, "world_size": 1}  # fmt: skip
    path = save_checkpoint(state, folder / "best.pt")
    return path, model.eval()


def glyph_images(tmp: Path, size: int = 32) -> list:
    """Real glyph images (RGB PIL) of a few characters in three of matplotlib's fonts."""
    import matplotlib

    from rankedlist.data import GlyphDataset

    fonts = tmp / "fonts"
    fonts.mkdir(exist_ok=True)
    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name in ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneral.ttf"):
        if not (fonts / name).exists():
            os.symlink(source / name, fonts / name)
    ds = GlyphDataset(
        "train", fonts_dir=fonts, characters="AbCdEfGh", min_instances=2, image_size=size,
        use_cache=False,
    )  # fmt: skip
    return [ds.load_image(i) for i in range(len(ds))]


def compare(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(smallest per-row cosine similarity, largest absolute difference)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return float(cos.min()), float(np.abs(got - want).max())
