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
