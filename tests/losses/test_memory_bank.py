"""MemoryBank: fill, wrap-around, warm-up, state round trip, and the same-sample pair search,
each against a plain Python model of a ring buffer written here."""

import io

import pytest
import torch

from rankedlist.losses import MemoryBank
from rankedlist.losses._excluded_pairs import pairs_in_rows, same_sample_pairs


def batch(n, dim=3, first_id=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, dim, generator=gen),
        torch.randint(0, 5, (n,), generator=gen),
        torch.arange(first_id, first_id + n),
    )


def ring_model(batches, size):
    """The expected content: slot -> (embedding row, label, index), writing slot after slot."""
    slots, nxt = {}, 0
    for emb, lab, ids in batches:
        for row in range(len(ids))[-size:]:
            slots[nxt] = (emb[row], int(lab[row]), int(ids[row]))
            nxt = (nxt + 1) % size
    return slots


def assert_holds(bank, slots):
    emb, lab, ids = bank.rows()
    assert bank.filled == len(bank) == len(slots) == emb.shape[0]
    for slot, (e, y, i) in slots.items():
        assert torch.equal(emb[slot], e) and int(lab[slot]) == y and int(ids[slot]) == i


def test_empty_at_the_start():
    bank = MemoryBank(size=6, dim=3)
    emb, lab, ids = bank.rows()
    assert bank.filled == 0 and emb.shape == (0, 3) and lab.shape == ids.shape == (0,)
    assert bank.started  # start = 0: used and filled from the first iteration


@pytest.mark.parametrize("size", [1, 5, 6, 7, 20])
def test_fill_and_wrap_around_match_a_ring_model(size):
    bank = MemoryBank(size=size, dim=3)
    seen = []
    for step, n in enumerate([3, 2, 4, 1, 9, 3]):
        b = batch(n, first_id=100 * step, seed=step)
        bank.enqueue(*b)
        seen.append(b)
        assert_holds(bank, ring_model(seen, size))
    assert int(bank.next_row) == sum(min(n, size) for n in [3, 2, 4, 1, 9, 3]) % size


@pytest.mark.parametrize("size", [1, 5, 7, 20])
def test_recent_rows_are_the_newest_ones_enqueued(size):
    """``recent(k)``: the last min(k, filled) rows ever enqueued, oldest first, as views."""
    bank = MemoryBank(size=size, dim=3)
    rows = []  # every row kept by enqueue, in order: (embedding, label, index)
    for step, n in enumerate([3, 2, 4, 1, 9, 3]):
        emb, lab, ids = batch(n, first_id=100 * step, seed=step)
        bank.enqueue(emb, lab, ids)
        keep = slice(max(0, n - size), n)  # a batch larger than the bank keeps its last rows
        rows += list(zip(emb[keep], lab[keep].tolist(), ids[keep].tolist(), strict=True))
        for k in range(-1, size + 2):
            parts = bank.recent(k)
            assert len(parts) <= 2 and all(e._base is bank.embeddings for e, _, _ in parts)
            got = [(e, int(y), int(i)) for p in parts for e, y, i in zip(*p, strict=True)]
            want = rows[len(rows) - min(max(k, 0), bank.filled) :] if k > 0 else []
            assert [(y, i) for _, y, i in got] == [(y, i) for _, y, i in want], (step, k)
            assert all(torch.equal(a[0], b[0]) for a, b in zip(got, want, strict=True))


def test_rows_are_detached_and_stored_in_the_bank_dtype():
    bank = MemoryBank(size=4, dim=3, dtype=torch.float64)
    x = torch.randn(2, 3, requires_grad=True)
    bank.enqueue(x * 2, torch.tensor([1, 2]), torch.tensor([7, 8]))
    emb, _, _ = bank.rows()
    assert not emb.requires_grad and emb.dtype == torch.float64
    torch.testing.assert_close(emb, (x * 2).detach().double())


def test_warm_up_fills_nothing_before_start():
    bank = MemoryBank(size=8, dim=3, start=2)
    for step in range(4):
        assert bank.started == (step >= 2)
        bank.update(*batch(3, first_id=10 * step, seed=step))
        assert bank.filled == 3 * max(0, step - 1)
    assert int(bank.step) == 4
    assert bank.rows()[2].tolist() == [20, 21, 22, 30, 31, 32]


def test_state_round_trip_continues_identically():
    bank = MemoryBank(size=5, dim=3, start=1)
    for step in range(4):
        bank.update(*batch(2, first_id=10 * step, seed=step))
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    restored = MemoryBank(size=5, dim=3, start=1)
    restored.load_state_dict(torch.load(buffer))
    assert set(bank.state_dict()) == {
        "embeddings",
        "labels",
        "indices",
        "next_row",
        "count",
        "step",
    }
    for a, b in ((bank, restored),):
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), key
    nxt = batch(3, first_id=99, seed=9)
    bank.update(*nxt)
    restored.update(*nxt)
    for key, value in bank.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


def test_bad_input_raises():
    with pytest.raises(ValueError, match="size"):
        MemoryBank(size=-1, dim=3)
    with pytest.raises(ValueError, match="size"):
        MemoryBank(size=0, dim=3)
    with pytest.raises(ValueError, match="start"):
        MemoryBank(size=4, dim=3, start=-2)
    bank = MemoryBank(size=4, dim=3)
    with pytest.raises(ValueError, match="width 3"):
        bank.enqueue(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), torch.arange(2))
    with pytest.raises(ValueError, match="indices"):
        bank.enqueue(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), torch.arange(3))
    with pytest.raises(RuntimeError, match="size mismatch"):
        MemoryBank(size=4, dim=3).load_state_dict(MemoryBank(size=6, dim=3).state_dict())


@pytest.mark.parametrize("seed", range(4))
def test_same_sample_pairs_match_a_double_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randint(0, 9, (11,), generator=gen)
    ref = torch.randint(0, 9, (30,), generator=gen)
    rows, cols = same_sample_pairs(query, ref, col_offset=5)
    want = sorted((i, j + 5) for i in range(11) for j in range(30) if query[i] == ref[j])
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == want
    assert rows.tolist() == sorted(rows.tolist())  # sorted by query row, for the chunks
    part = pairs_in_rows((rows, cols), 3, 8)
    want_part = [(i - 3, j) for i, j in want if 3 <= i < 8]
    got_part = [] if part is None else list(zip(part[0].tolist(), part[1].tolist(), strict=True))
    assert sorted(got_part) == want_part


def test_same_sample_pairs_with_an_empty_side():
    rows, cols = same_sample_pairs(torch.arange(4), torch.zeros(0, dtype=torch.long))
    assert rows.numel() == cols.numel() == 0
