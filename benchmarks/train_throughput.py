"""Training throughput: the full step as `rankedlist train` runs it against the compute floor.

The full step is the run's loader (data, augmentation, collation) plus `train_one_step`; the floor
is the same model forward + loss + backward + optimiser step on one batch already in memory.
Both are measured in the same process, alternating, so the ratio means something on a shared
machine even when the absolute images/s do not.

    python benchmarks/train_throughput.py                      # glyphs (the demo) and a JPEG folder
    python benchmarks/train_throughput.py --only glyphs --steps 100

(a) glyphs: GlyphNet at 32 px, P x K = 32 x 4, as `make demo`; (b) a synthetic JPEG folder
(generated here: 2,000 images of 350-650 px) with a timm resnet18 at 224 px, P x K = 8 x 2; each
with `data.num_workers` 0 and 2. It also prints where the rest of the time goes (loader wait vs
step) and the JPEG decode speed of PIL against torchvision.io.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rankedlist.training.batch_feed import make_train_loader
from rankedlist.training.config import load_config
from rankedlist.training.distributed import DistributedContext
from rankedlist.training.run import build_run
from rankedlist.training.step import train_one_step

REPO = Path(__file__).resolve().parents[1]


def measure(config, steps: int, warmup: int = 5) -> dict[str, float]:
    """Images/s of the full step and of the floor, and the loader's share of the full step."""
    torch.set_num_threads(config.train.num_threads or torch.get_num_threads())
    ctx = DistributedContext()
    run = build_run(config, ctx, load_pretrained=False)
    loader = iter(
        make_train_loader(
            run.train_set, run.sampler, 0, 0, config, 0, device=ctx.device,
            augment=run.batch_augment,
        )
    )  # fmt: skip
    images, labels, _, _ = next(loader)
    batch = images.shape[0]

    def step(x, y):
        train_one_step(run.model, run.losses, x, y, run.optimizer, run.scaler, config, ctx)

    for _ in range(warmup):
        step(images, labels)
        next(loader)
    wait = work = floor = 0.0
    for _ in range(steps):  # alternate so both see the same machine load
        t0 = time.perf_counter()
        x, y, _, _ = next(loader)
        t1 = time.perf_counter()
        step(x, y)
        t2 = time.perf_counter()
        step(images, labels)
        t3 = time.perf_counter()
        wait, work, floor = wait + t1 - t0, work + t2 - t1, floor + t3 - t2
    full = wait + work
    return {
        "full": steps * batch / full,
        "floor": steps * batch / floor,
        "ratio": floor / full,
        "loader_share": wait / full,
    }


def jpeg_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of varied sizes in 100 class folders (smooth noise, so they compress like
    photos rather than like white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class_{i % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(350, 650, size=2))
        small = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        image.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def decode_speed(folder: Path, count: int = 200) -> tuple[float, float]:
    """Images/s decoding JPEGs to RGB: PIL, torchvision.io.decode_jpeg."""
    from PIL import Image
    from torchvision.io import decode_jpeg, read_file

    files = sorted(folder.rglob("*.jpg"))[:count]
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB").load()
    t1 = time.perf_counter()
    for f in files:
        decode_jpeg(read_file(str(f)))
    t2 = time.perf_counter()
    return len(files) / (t1 - t0), len(files) / (t2 - t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("glyphs", "jpeg"), default=None)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--jpeg-steps", type=int, default=15)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    rows = []
    if args.only in (None, "glyphs"):
        for workers in args.workers:
            config = load_config(
                REPO / "configs" / "glyphs.yaml",
                [f"data.num_workers={workers}", "train.tensorboard=false"],
            )
            rows.append(("glyphs, GlyphNet 32 px, 32 x 4", workers, measure(config, args.steps)))
    if args.only in (None, "jpeg"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = jpeg_folder(Path(tmp) / "images", 2000)
            pil, tv = decode_speed(folder)
            print(f"JPEG decode (RGB, ~500 px): PIL {pil:.0f} img/s, torchvision.io {tv:.0f} img/s")
            for workers in args.workers:
                config = load_config(
                    None,
                    [
                        "data.dataset=folder", f"data.root={folder}", "data.p=8", "data.k=2",
                        f"data.num_workers={workers}", "model.name=resnet18",
                        "model.embedding_dim=128", "train.device=cpu", "train.tensorboard=false",
                    ],
                )  # fmt: skip
                rows.append(
                    (
                        "JPEG folder, resnet18 224 px, 8 x 2",
                        workers,
                        measure(config, args.jpeg_steps),
                    )
                )
    print()
    print("| setting | workers | full step img/s | floor img/s | full / floor | loader wait |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, workers, m in rows:
        print(
            f"| {name} | {workers} | {m['full']:.0f} | {m['floor']:.0f} | {m['ratio']:.2f} | "
            f"{100 * m['loader_share']:.0f}% |"
        )


if __name__ == "__main__":
    main()
