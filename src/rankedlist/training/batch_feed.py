"""The training batch feed: an endless P x K batch stream with per-sample seeded augmentation.

Every sample's augmentation is seeded from (seed, epoch, batch, position in the global batch), not
drawn from a shared stream, so a resumed run sees exactly the images an uninterrupted one would,
whatever the number of data-loader workers or processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from rankedlist.training.config_schema import Config
from rankedlist.training.loader_workers import resolve_num_workers

__all__ = ["EndlessBatches", "SeededSamples", "make_train_loader"]


def _sample_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from small integers (splitmix64 steps; cheap per sample)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x >> 1


class SeededSamples(Dataset):
    """Wraps a dataset so ``dataset[(index, seed)]`` transforms sample ``index`` under ``seed``.

    torch's generator (the one torchvision's random transforms draw from) is seeded per sample
    inside a forked RNG state, so the augmentation depends only on the sample's seed and the
    caller's stream is left untouched. Each item is ``(image, label, index, seed)``: a batch
    carries the dataset index of each sample (a cross-batch memory excludes older copies of the
    same sample by it) and its seed (for augmentation applied to the whole batch later). A
    dataset with ``fast_batch(indices)`` hands the loader whole batches, already collated.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> tuple[Any, int, int, int]:
        return self._items([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any] | _Collated:
        """The batch's items, or the whole batch already collated (a :class:`_Collated`
        ``(images, labels, indices, seeds)``) when the dataset makes batches itself."""
        # A dataset that makes a whole batch in one array operation (deterministic: no seed)
        # hands it over collated: splitting it into samples to stack them again costs about a
        # tenth of the glyph loader's time.
        fast = getattr(self.dataset, "fast_batch", None)
        indices = [index for index, _ in items]
        made = fast(indices) if fast is not None else None
        if made is None:
            return self._items(items)
        images, labels = made
        seeds = torch.tensor([seed for _, seed in items], dtype=torch.int64)
        return _Collated((images, labels, torch.tensor(indices, dtype=torch.int64), seeds))

    def _items(self, items: list[tuple[int, int]]) -> list[tuple[Any, int, int, int]]:
        # The DataLoader calls this once per batch: one fork of the RNG state per batch.
        with torch.random.fork_rng(devices=[]):
            out = []
            for index, seed in items:
                # The CPU generator only: torch.manual_seed also reseeds every accelerator
                # backend, which costs about a millisecond per call.
                torch.default_generator.manual_seed(seed)
                image, label = self.dataset[index]
                out.append((image, label, index, seed))
            return out


class EndlessBatches:
    """The P x K sampler's batches from ``(epoch, start)`` on, epoch after epoch, without end.

    One data loader then serves the whole run, so its workers are not restarted at every epoch
    (CUB with P = 20 has only 5 batches per epoch). Each index comes with its sample's seed.
    """

    def __init__(self, sampler: Any, epoch: int, start: int, seed: int, rank: int) -> None:
        self.sampler, self.epoch, self.start = sampler, epoch, start
        self.seed, self.rank = seed, rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start
        while True:
            self.sampler.set_epoch(epoch, start_batch=start)
            for b, batch in enumerate(self.sampler, start=start):
                # Seeded by the position in the GLOBAL batch: the same image gets the same
                # augmentation whatever the number of processes.
                offset = self.rank * len(batch)
                yield [
                    (int(i), _sample_seed(self.seed, epoch, b, offset + j))
                    for j, i in enumerate(batch)
                ]
            epoch, start = epoch + 1, 0


def make_train_loader(
    dataset: Dataset,
    sampler: Any,
    epoch: int,
    start: int,
    config: Config,
    rank: int,
    *,
    device: torch.device | str,
    augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> DataLoader:
    """An endless loader from batch ``start`` of ``epoch`` (the batches already trained on are
    skipped, not replayed). ``augment(images, seeds)`` transforms each collated batch (in the
    loader's workers when there are some, so it overlaps the training step). ``device`` is the
    training device, which decides the default number of workers."""
    workers = resolve_num_workers(config.data.num_workers, device)
    return DataLoader(
        SeededSamples(dataset),
        batch_sampler=EndlessBatches(sampler, epoch, start, config.train.seed, rank),
        num_workers=workers,
        collate_fn=CollateBatches(augment),
        pin_memory=torch.device(device).type == "cuda",  # page-locked only for a GPU copy
        # Workers live as long as the loader (one per run): no restart cost, and two batches
        # each in flight ahead of the step.
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        # Its own generator: creating the iterator must not draw from the global stream.
        generator=torch.Generator().manual_seed(config.train.seed),
    )


class _Collated(tuple):
    """``(images, labels, indices, seeds)`` that a dataset made as a batch: collated already."""


class CollateBatches:
    """Collate ``(image, label, index, seed)`` items (or pass a :class:`_Collated` batch on),
    then augment the image batch by its seeds when there is a batch augmentation.

    A class, not a closure: the loader's worker processes must be able to pickle it.
    """

    def __init__(
        self, augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    ) -> None:
        self.augment = augment

    def __call__(self, items: list[Any]) -> list[torch.Tensor]:
        images, labels, indices, seeds = (
            list(items) if isinstance(items, _Collated) else default_collate(items)
        )
        if self.augment is not None:
            images = self.augment(images, seeds)
        return [images, labels, indices, seeds]
