"""build_transform: output shapes, channel order and normalisation against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rankedlist.data import build_transform
from rankedlist.data.transforms import CropNonWhite, ResizeLongSidePad


def landscape(colour=(200, 100, 50), size=(300, 200)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_bninception_test_pipeline_values() -> None:
    x = build_transform("bninception", train=False)(landscape())
    assert x.shape == (3, 227, 227) and x.dtype == torch.float32
    # centre: the colour in BGR order, 0-255, minus (104, 117, 123)
    np.testing.assert_allclose(x[:, 113, 113].numpy(), [50 - 104, 100 - 117, 200 - 123])
    # 300 x 200 -> 256 x 171 padded to 256 x 256 with white, so the top rows of the crop are white
    np.testing.assert_allclose(x[:, 0, 113].numpy(), [255 - 104, 255 - 117, 255 - 123])


def test_bninception_train_pipeline_is_random_crop_of_canvas() -> None:
    tf = build_transform("bninception", train=True)
    torch.manual_seed(0)
    outs = [tf(landscape()) for _ in range(6)]
    assert all(o.shape == (3, 227, 227) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # crops / flips vary
    assert build_transform("bninception", train=False, image_size=112)(landscape()).shape == (
        3,
        112,
        112,
    )


def test_crop_non_white_and_pad() -> None:
    img = Image.new("RGB", (100, 80), (255, 255, 255))
    img.paste((0, 0, 0), (40, 30, 50, 45))  # a 10 x 15 dark box
    cropped = CropNonWhite(margin=5)(img)
    assert cropped.size == (20, 25)
    assert CropNonWhite()(Image.new("RGB", (7, 7), "white")).size == (7, 7)
    padded = ResizeLongSidePad(64)(Image.new("RGB", (32, 16), (0, 0, 0)))
    arr = np.asarray(padded)
    assert padded.size == (64, 64) and (arr[:16] == 255).all() and (arr[16:48] == 0).all()


def test_imagenet_pipelines() -> None:
    img = landscape((255, 128, 0), (320, 240))
    x = build_transform("imagenet", train=False)(img)
    assert x.shape == (3, 224, 224)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (np.array([255, 128, 0]) / 255.0 - mean) / std
    np.testing.assert_allclose(x[:, 100, 100].numpy(), expected, atol=1e-5)
    assert build_transform("imagenet", train=True)(img).shape == (3, 224, 224)
    assert build_transform("imagenet", train=True, image_size=160)(img).shape == (3, 160, 160)


def test_glyph_pipelines() -> None:
    img = Image.new("RGB", (32, 32), "white")
    img.paste((0, 0, 0), (12, 8, 20, 24))
    x = build_transform("glyphs", train=False)(img)
    np.testing.assert_allclose(
        x.numpy(), np.asarray(img).transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-6
    )
    torch.manual_seed(1)
    aug = build_transform("glyphs", train=True)
    outs = [aug(img) for _ in range(5)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    # light: the ink stays roughly where it was, the fill is white (+1)
    assert all(abs(o.mean().item() - x.mean().item()) < 0.1 for o in outs)
    assert all(o[:, 0, 0].tolist() == [1.0, 1.0, 1.0] for o in outs)
    assert build_transform("glyphs", train=False, image_size=48)(img).shape == (3, 48, 48)


def test_unknown_style() -> None:
    with pytest.raises(ValueError, match="bninception"):
        build_transform("vgg", train=True)
