"""Picture: the glyph augmentation per image (torchvision's RandomAffine on PIL, the old path) and
per batch (rankedlist.data.BatchRandomAffine on tensors, the training path), same images.

    python benchmarks/glyph_augmentation_picture.py --out docs/glyph_augmentation.png

Also prints the mean absolute pixel change each path makes (a check that both augment equally
strongly: their distributions are the same, their draws differ).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from rankedlist.data import build_batch_augment, build_transform, get_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/glyph_augmentation.png"))
    parser.add_argument("--count", type=int, default=12)
    args = parser.parse_args()

    plain = get_dataset("glyphs", split="train", transform=build_transform("glyphs", False, 32))
    per_image = build_transform("glyphs", True, 32)
    batch = build_batch_augment("glyphs", True)
    picks = torch.linspace(0, len(plain) - 1, args.count).long().tolist()
    originals = torch.stack([plain[i][0] for i in picks])
    torch.manual_seed(0)
    old = torch.stack([per_image(plain.load_image(i)) for i in picks])
    new = batch(originals, torch.arange(len(picks)) * 7919 + 11)

    # Over many samples: how much each path changes an image, on average.
    many = torch.stack([plain[i][0] for i in range(0, len(plain), max(1, len(plain) // 512))])
    torch.manual_seed(1)
    old_many = torch.stack(
        [per_image(plain.load_image(i)) for i in range(0, len(plain), max(1, len(plain) // 512))]
    )
    new_many = batch(many, torch.arange(len(many)) + 12345)
    print(
        f"mean |change| per pixel: per image {float((old_many - many).abs().mean()):.4f}, "
        f"per batch {float((new_many - many).abs().mean()):.4f} ({len(many)} images)"
    )

    rows = [("rendered", originals), ("per image (PIL, before)", old), ("per batch (now)", new)]
    fig, axes = plt.subplots(3, args.count, figsize=(args.count * 0.9, 3.2))
    for r, (title, images) in enumerate(rows):
        for c in range(args.count):
            ax = axes[r, c]
            ax.imshow(images[c, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
