"""The input contract reproduces rankedlist's own preprocessing on real images.

``prepare_image`` follows the contract with PIL and numpy only; the reference is
``build_transform(style, train=False, size)`` (torchvision and rankedlist's transforms) on the
same file, read as rankedlist reads it (``read_rgb``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _export_helpers import glyph_images
from PIL import Image

from rankedlist.data import build_transform, read_rgb
from rankedlist.export import input_contract, prepare_image

#: A real, non-square picture on white: the README's retrieval grid (photos of glyphs, frames,
#: text), for the photo pipelines' crop-to-content, long-side and short-side resizes.
PICTURE = Path(__file__).resolve().parents[2] / "docs" / "demo_retrieval_grid.png"


@pytest.fixture(scope="module")
def real_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    files = []
    for i, image in enumerate(glyph_images(root, 40)[:3]):
        image.save(root / f"glyph{i}.png")
        files.append(root / f"glyph{i}.png")
    with Image.open(PICTURE) as im:  # a crop, a transparent copy and a small one
        im.convert("RGB").crop((0, 0, 700, 260)).save(root / "wide.jpg", quality=92)
        rgba = im.convert("RGBA").crop((100, 40, 400, 500))
        alpha = np.asarray(rgba).copy()
        alpha[:60, :, 3] = 0  # a transparent band: composited over white by both
        Image.fromarray(alpha).save(root / "tall_transparent.png")
        im.convert("RGB").crop((0, 0, 50, 30)).save(root / "small.png")
    return [*files, root / "wide.jpg", root / "tall_transparent.png", root / "small.png"]


@pytest.mark.parametrize(
    "style, size",
    [("glyphs", 32), ("glyphs", 48), ("imagenet", 224), ("imagenet", 64),
     ("bninception", 227), ("bninception", 96)],
)  # fmt: skip
def test_contract_reproduces_rankedlist_preprocessing(real_images, style, size):
    contract = input_contract(style, size, embedding_dim=16)
    transform = build_transform(style, False, size)
    for path in real_images:
        want = transform(read_rgb(path)).numpy()
        got = prepare_image(path, contract)
        assert got.shape == want.shape == (3, size, size) and got.dtype == np.float32
        # The same arithmetic in another order: float32 rounding only (the 0-255 scale of
        # bninception is exact).
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=f"{style} {path.name}")


def test_contract_states_what_a_consumer_needs():
    c = input_contract("bninception", 227, embedding_dim=1536)
    assert c["channel_order"] == "BGR" and c["scale"] == 1.0
    assert c["mean"] == [104.0, 117.0, 123.0] and c["std"] == [1.0, 1.0, 1.0]
    assert [s["op"] for s in c["steps"]] == [
        "crop_non_white",
        "resize_long_side_pad",
        "center_crop",
    ]
    assert c["steps"][1]["size"] == 256 and c["steps"][2]["size"] == 227
    assert c["input"] == {
        "name": "images", "layout": "NCHW", "dtype": "float32", "shape": ["batch", 3, 227, 227]
    }  # fmt: skip
    assert c["output"]["shape"] == ["batch", 1536] and c["output"]["normalized"] is True
    i = input_contract("imagenet", 224, embedding_dim=512)
    assert i["channel_order"] == "RGB" and i["scale"] == 1 / 255
    assert i["mean"] == [0.485, 0.456, 0.406] and i["std"] == [0.229, 0.224, 0.225]
    assert [(s["op"], s["size"]) for s in i["steps"]] == [
        ("resize_short_side", 256),
        ("center_crop", 224),
    ]
    g = input_contract("glyphs", 32, embedding_dim=64)
    assert g["mean"] == g["std"] == [0.5] * 3 and g["steps"][0]["op"] == "resize"
    with pytest.raises(ValueError, match="unknown input style 'vit'"):
        input_contract("vit", 224, 8)
