"""PKSampler: batch structure, epochs, determinism, distributed shards and resuming."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rankedlist.data import PKSampler

# 11 classes with labels that are not 0..C-1; sizes 1..7 so some are smaller than K
SIZES = {3: 5, 8: 1, 9: 7, 20: 4, 21: 2, 40: 6, 41: 3, 50: 5, 77: 4, 90: 2, 99: 6}
LABELS = np.concatenate([np.full(n, c) for c, n in SIZES.items()])
np.random.default_rng(1).shuffle(LABELS)


def epoch_batches(sampler: PKSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize(
    "p,k",
    [
        (3, 4),
        (2, 3),
        (5, 2),
        pytest.param(11, 1, marks=pytest.mark.filterwarnings("ignore:PKSampler with k=1")),
    ],
)
def test_every_batch_has_p_classes_of_k(p: int, k: int) -> None:
    sampler = PKSampler(LABELS, p, k, seed=3)
    assert len(sampler) == len(SIZES) // p
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(SIZES) // p
        seen: list[int] = []
        for batch in batches:
            counts = Counter(int(LABELS[i]) for i in batch)
            assert len(batch) == p * k and len(counts) == p
            assert set(counts.values()) == {k}
            seen.extend(counts)
            for c in counts:  # distinct images when the class has enough, else all of them
                members = [i for i in batch if LABELS[i] == c]
                if SIZES[c] >= k:
                    assert len(set(members)) == k
                else:
                    assert set(members) == set(np.flatnonzero(LABELS == c).tolist())
        assert len(seen) == len(set(seen))  # no class twice in an epoch


def test_same_seed_same_order_other_epoch_or_seed_differs() -> None:
    a = epoch_batches(PKSampler(LABELS, 3, 2, seed=7), 4)
    b = epoch_batches(PKSampler(LABELS, 3, 2, seed=7), 4)
    assert a == b
    assert a != epoch_batches(PKSampler(LABELS, 3, 2, seed=7), 5)
    assert a != epoch_batches(PKSampler(LABELS, 3, 2, seed=8), 4)


def test_classes_rotate_across_epochs() -> None:
    # 11 classes, P = 5: one class waits each epoch, but a fresh shuffle brings every class in
    sampler = PKSampler(LABELS, 5, 2)
    used = set()
    for epoch in range(10):
        for batch in epoch_batches(sampler, epoch):
            used.update(int(LABELS[i]) for i in batch)
    assert used == set(SIZES)


@pytest.mark.parametrize("p,k,world", [(4, 3, 2), (3, 2, 2), (6, 2, 3), (3, 4, 4)])
def test_rank_shards_partition_each_global_batch(p: int, k: int, world: int) -> None:
    full = epoch_batches(PKSampler(LABELS, p, k, seed=5), 2)
    shards = [epoch_batches(PKSampler(LABELS, p, k, seed=5, world_size=world, rank=r), 2)
              for r in range(world)]  # fmt: skip
    for r in range(world):
        assert len(shards[r]) == len(full)
    for b, global_batch in enumerate(full):
        parts = [shards[r][b] for r in range(world)]
        assert all(len(part) == p * k // world for part in parts)
        assert sum(parts, []) == global_batch  # rank order concatenation is the global batch
        if p % world == 0:  # whole classes per rank
            classes = [{int(LABELS[i]) for i in part} for part in parts]
            assert all(len(c) == p // world for c in classes)
            assert len(set().union(*classes)) == p


def test_resume_mid_epoch() -> None:
    sampler = PKSampler(LABELS, 2, 3, seed=1)
    full = epoch_batches(sampler, 6)
    sampler.set_epoch(6, start_batch=3)
    assert len(sampler) == len(full) - 3
    assert list(sampler) == full[3:]
    sampler.set_epoch(7)
    assert len(sampler) == len(full)
    with pytest.raises(ValueError, match="start_batch"):
        sampler.set_epoch(7, start_batch=len(full) + 1)


def test_works_as_dataloader_batch_sampler() -> None:
    ds = TensorDataset(torch.arange(len(LABELS)), torch.as_tensor(LABELS))
    sampler = PKSampler(LABELS, 3, 2)
    loader = DataLoader(ds, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    sampler.set_epoch(0)
    for (idx, lab), expected in zip(batches, list(sampler), strict=True):
        assert idx.tolist() == expected
        assert lab.tolist() == LABELS[expected].tolist()


def test_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        PKSampler(LABELS, 3, 3, world_size=2)
    with pytest.raises(ValueError, match="only 11 classes"):
        PKSampler(LABELS, 12, 2)
    with pytest.raises(ValueError, match="rank"):
        PKSampler(LABELS, 2, 2, world_size=2, rank=2)
    with pytest.raises(ValueError, match="k must be"):
        PKSampler(LABELS, 2, 0)


def test_k1_warns_no_positive_pairs() -> None:
    with pytest.warns(UserWarning) as record:
        sampler = PKSampler(LABELS, 4, 1)
    assert [str(w.message) for w in record] == [
        "PKSampler with k=1: each of the P=4 classes appears once per batch, so no batch holds a "
        "positive pair and pair-based losses (such as the Ranked List Loss) get no positives; "
        "use k >= 2"
    ]
    assert record[0].filename == __file__  # points at the caller
    assert all(len(batch) == 4 for batch in sampler)  # still usable (e.g. for proxy losses)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PKSampler(LABELS, 4, 2)
