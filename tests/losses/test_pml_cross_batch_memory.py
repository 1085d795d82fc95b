"""PMLCrossBatchMemory: PML's CrossBatchMemory after a warm-up, with a checkpointable queue."""

import io

import pytest
import torch

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

from rankedlist.losses import PMLCrossBatchMemory  # noqa: E402

DIM, SIZE = 6, 20


def batches(count, n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, DIM, generator=gen), torch.randint(0, 3, (n,), generator=gen))
            for _ in range(count)]  # fmt: skip


def wrapped(start, ms=False):
    loss = pml_losses.MultiSimilarityLoss() if ms else pml_losses.ContrastiveLoss()
    miner = pml_miners.MultiSimilarityMiner() if ms else None
    return PMLCrossBatchMemory(pml_losses.CrossBatchMemory, loss, miner, DIM, SIZE, start)


@pytest.mark.parametrize("ms", [False, True], ids=["contrastive", "multi_similarity"])
def test_warm_up_then_pmls_own_memory(ms):
    data = batches(5)
    loss_fn = wrapped(start=2, ms=ms)
    plain_loss = pml_losses.MultiSimilarityLoss() if ms else pml_losses.ContrastiveLoss()
    plain_miner = pml_miners.MultiSimilarityMiner() if ms else None
    reference = pml_losses.CrossBatchMemory(
        pml_losses.MultiSimilarityLoss() if ms else pml_losses.ContrastiveLoss(),
        DIM, memory_size=SIZE,
        miner=pml_miners.MultiSimilarityMiner() if ms else None,
    )  # fmt: skip
    for step, (x, y) in enumerate(data):
        got = loss_fn(x, y)
        if step < 2:  # warm-up: the plain loss and its miner on the batch
            tuples = plain_miner(x, y) if plain_miner else None
            want = plain_loss(x, y, tuples)
            assert loss_fn.last_stats == {"memory_fill": 0.0}
        else:
            want = reference(x, y)
            assert loss_fn.last_stats == {"memory_fill": float(min(8 * (step - 1), SIZE))}
        assert float(got) > 0
        torch.testing.assert_close(got, want)


def test_state_round_trip_resumes_the_queue():
    data = batches(6, seed=1)
    loss_fn = wrapped(start=1)
    for x, y in data[:4]:
        loss_fn(x, y)
    buffer = io.BytesIO()
    torch.save(loss_fn.state_dict(), buffer)
    buffer.seek(0)
    restored = wrapped(start=1)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert restored.filled == loss_fn.filled == SIZE  # wrapped around
    assert int(restored.step) == 4
    for x, y in data[4:]:
        torch.testing.assert_close(restored(x, y), loss_fn(x, y))
    assert torch.equal(restored.xbm.embedding_memory, loss_fn.xbm.embedding_memory)


def test_bad_input_raises():
    loss_fn = wrapped(start=0)
    with pytest.raises(ValueError, match="width"):
        loss_fn(torch.randn(4, DIM + 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="global batch"):
        loss_fn(torch.randn(SIZE + 1, DIM), torch.zeros(SIZE + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="memory_size"):
        PMLCrossBatchMemory(
            pml_losses.CrossBatchMemory, pml_losses.ContrastiveLoss(), None, DIM, -3
        )
    with pytest.raises(ValueError, match="memory_start"):
        wrapped(start=-1)


def naive_contrastive(x, y, ids, ref, ref_y, ref_ids, pos_margin=0.0, neg_margin=1.0):
    """PML's ContrastiveLoss by a loop over every (query, memory row) pair, skipping the pairs of
    one sample (same dataset index: the query's own row, a copy in its batch, an older copy): the
    mean of the non-zero positive hinges plus that of the non-zero negative ones."""
    pos, neg = [], []
    for i in range(x.shape[0]):
        fi = x[i] / x[i].norm()
        for j in range(ref.shape[0]):
            if int(ref_ids[j]) == int(ids[i]):
                continue
            d = (fi - ref[j] / ref[j].norm()).norm()
            if int(ref_y[j]) == int(y[i]):
                pos.append(torch.relu(d - pos_margin))
            else:
                neg.append(torch.relu(neg_margin - d))

    def nonzero_mean(terms):
        live = [t for t in terms if float(t.detach()) > 0]
        return sum(live) / len(live) if live else torch.zeros((), dtype=x.dtype)

    return nonzero_mean(pos) + nonzero_mean(neg)


def test_copies_of_a_sample_are_never_paired_in_the_memory():
    """Batches with a sample repeated inside (rows 1 and 6) and samples met again in later
    batches (older copies in the memory): loss and gradient of the naive loop over the memory's
    last SIZE rows (the current batch included) that skips every pair of one sample."""
    gen = torch.Generator().manual_seed(3)
    loss_fn = wrapped(start=0)
    seen = []  # (embedding, label, id) of every enqueued row, oldest first
    for _ in range(4):
        x = torch.randn(8, DIM, generator=gen, dtype=torch.float64)
        ids = torch.randperm(12, generator=gen)[:8]  # 12 samples: later batches meet them again
        x[6], ids[6] = -x[1], ids[1]  # far apart: a positive pair unless excluded
        y = ids % 3  # a sample keeps its class
        seen += list(zip(x, y, ids, strict=True))
        memory = seen[-SIZE:]
        ref = torch.stack([r[0] for r in memory])
        ref_y, ref_ids = (torch.stack([r[k] for r in memory]) for k in (1, 2))
        xr = x.clone().requires_grad_(True)
        want = naive_contrastive(xr, y, ids, ref, ref_y, ref_ids)
        want.backward()
        xo = x.clone().requires_grad_(True)
        got = loss_fn(xo, y, indices=ids)
        got.backward()
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-12)
        assert loss_fn.last_stats == {"memory_fill": float(len(memory))}


@pytest.mark.parametrize("ms", [False, True], ids=["contrastive", "multi_similarity"])
def test_distinct_samples_give_exactly_pmls_own_memory(ms):
    """Dataset indices that never repeat: the same tuples, the same numbers as PML."""
    data = batches(5, seed=4)
    loss_fn = wrapped(start=0, ms=ms)
    reference = pml_losses.CrossBatchMemory(
        pml_losses.MultiSimilarityLoss() if ms else pml_losses.ContrastiveLoss(),
        DIM, memory_size=SIZE,
        miner=pml_miners.MultiSimilarityMiner() if ms else None,
    )  # fmt: skip
    for step, (x, y) in enumerate(data):
        got = loss_fn(x, y, indices=torch.arange(8) + 8 * step)
        assert torch.equal(got, reference(x, y)) and float(got) > 0


def test_a_checkpoint_without_sample_ids_loads_with_them_unknown():
    loss_fn = wrapped(start=0)
    loss_fn(*batches(1)[0], indices=torch.arange(8))
    state = loss_fn.state_dict()
    del state["sample_ids"]  # written before the memory kept dataset indices
    restored = wrapped(start=0)
    restored.load_state_dict(state)
    assert restored.filled == 8 and torch.equal(restored.sample_ids, torch.full((SIZE,), -1))
