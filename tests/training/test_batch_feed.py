"""The batch feed's hand-over: a dataset that makes whole batches gives the loader what collating
its items one by one would give, and single items stay items."""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from rankedlist.data import build_transform, get_dataset
from rankedlist.training.batch_feed import CollateBatches, SeededSamples


class _ItemsOnly(torch.utils.data.Dataset):
    """The same dataset without ``fast_batch``: the per-item path, the reference."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def _glyphs():
    return get_dataset("glyphs", split="train", transform=build_transform("glyphs", False))


def test_a_made_batch_equals_its_items_collated():
    data = _glyphs()
    items = [(3, 11), (400, 2**62 + 5), (3, 7), (250, 0)]
    made = CollateBatches(None)(SeededSamples(data).__getitems__(items))
    reference = default_collate(SeededSamples(_ItemsOnly(data)).__getitems__(items))
    assert len(made) == len(reference) == 4
    for got, want in zip(made, reference, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_one_item_is_an_item_not_a_batch():
    data = _glyphs()
    image, label, index, seed = SeededSamples(data)[(400, 9)]
    expected_image, expected_label = data[400]
    assert image.shape == (3, 32, 32) and torch.equal(image, expected_image)
    assert (label, index, seed) == (expected_label, 400, 9)


def test_the_batch_augmentation_sees_the_seeds_of_the_items():
    seen = {}

    def augment(images, seeds):
        seen["seeds"] = seeds.tolist()
        return images + 1

    items = [(5, 123), (6, 456)]
    images, *_ = CollateBatches(augment)(SeededSamples(_glyphs()).__getitems__(items))
    assert seen["seeds"] == [123, 456]
    assert torch.equal(images - 1, torch.stack([_glyphs()[5][0], _glyphs()[6][0]]))
