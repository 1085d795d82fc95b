"""Batched tensor augmentation: torchvision's affine for the same parameters, torchvision's
RandomAffine distribution, per-sample seeding, and the glyph batch path equal to the per-item
one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from rankedlist.data import build_batch_augment, build_transform, get_dataset
from rankedlist.data.batch_augment import BatchRandomAffine, affine_parameters
from rankedlist.data.transforms import GlyphsToTensor


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_each_image_is_torchvisions_affine_with_its_parameters(size):
    images = torch.rand(16, 3, *size) * 2 - 1
    seeds = torch.arange(16) * 7919 + 3
    augment = BatchRandomAffine(degrees=30.0, translate=0.1)  # large, so errors show
    out = augment(images, seeds)
    params = affine_parameters(seeds, 30.0, 0.1, (0.9, 1.1), size)
    for i, (angle, tx, ty, scale) in enumerate(params.tolist()):
        expected = TF.affine(
            images[i], angle=angle, translate=[int(tx), int(ty)], scale=scale, shear=[0.0, 0.0],
            interpolation=InterpolationMode.NEAREST, fill=[1.0, 1.0, 1.0],
        )  # fmt: skip
        # Nearest sampling: a pixel centre exactly on a boundary may round the other way.
        assert (out[i] - expected).abs().gt(1e-6).float().mean() < 0.002


def test_parameters_follow_torchvisions_random_affine():
    seeds = torch.arange(20_000)
    ours = affine_parameters(seeds, 8.0, 0.06, (0.9, 1.1), (32, 32))
    torch.manual_seed(0)
    theirs = np.array([
        [a, t[0], t[1], s]
        for a, t, s, _ in (
            T.RandomAffine.get_params((-8.0, 8.0), (0.06, 0.06), (0.9, 1.1), None, [32, 32])
            for _ in range(20_000)
        )
    ])  # fmt: skip
    assert ours[:, 0].min() >= -8 and ours[:, 0].max() <= 8
    assert set(np.unique(ours[:, 1])) == set(np.unique(theirs[:, 1])) == {-2, -1, 0, 1, 2}
    for column in range(4):  # same means and spreads (uniforms; 20k draws: about 1% noise)
        assert ours[:, column].mean() == pytest.approx(theirs[:, column].mean(), abs=0.05)
        assert ours[:, column].std() == pytest.approx(theirs[:, column].std(), rel=0.03)
    for shift in (-2, -1, 0, 1, 2):  # the rounded shifts are equally likely in both
        assert np.mean(ours[:, 1] == shift) == pytest.approx(
            np.mean(theirs[:, 1] == shift), abs=0.015
        )


def test_an_image_depends_only_on_its_own_seed():
    images = torch.rand(8, 3, 24, 24)
    seeds = torch.tensor([5, 9, 5, 1, 2, 3, 4, 6])
    augment = BatchRandomAffine()
    out = augment(images, seeds)
    for i in range(8):
        torch.testing.assert_close(out[i : i + 1], augment(images[i : i + 1], seeds[i : i + 1]))
    assert not torch.equal(out[0], augment(images[:1], torch.tensor([6]))[0])


def test_identity_parameters_return_the_input():
    images = torch.rand(4, 3, 20, 20)
    identity = BatchRandomAffine(degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    torch.testing.assert_close(identity(images, torch.arange(4)), images, rtol=0, atol=1e-6)


def test_glyph_tensor_transform_is_the_old_compose_bit_for_bit():
    data = get_dataset("glyphs", split="test")
    old = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    for i in (0, 7, 100):
        image = data.load_image(i)
        assert torch.equal(GlyphsToTensor()(image), old(image))
        resized = T.Compose([T.Resize((40, 40)), old])(image)
        torch.testing.assert_close(GlyphsToTensor(40)(image), resized, rtol=0, atol=1e-6)


def test_the_glyph_batch_path_equals_the_per_item_path():
    data = get_dataset("glyphs", split="train", transform=build_transform("glyphs", False))
    picks = [3, 1, 400, 3, 250]
    fast = data.fast_batch(picks)
    assert fast is not None
    images, labels = fast
    assert images.shape == (len(picks), 3, 32, 32) and labels.dtype == torch.int64
    for image, label, i in zip(images, labels, picks, strict=True):
        expected_image, expected_label = data[i]
        assert torch.equal(image, expected_image) and int(label) == expected_label
    data.transform = build_transform("glyphs", True)  # a per-image random pipeline: no batch path
    assert data.fast_batch(picks) is None


def test_batch_augment_exists_for_glyphs_training_only():
    assert isinstance(build_batch_augment("glyphs", True), BatchRandomAffine)
    assert build_batch_augment("glyphs", False) is None
    assert build_batch_augment("imagenet", True) is None
    with pytest.raises(ValueError, match="unknown transform style 'nope'"):
        build_batch_augment("nope", True)
