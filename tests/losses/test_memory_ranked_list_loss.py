"""MemoryRankedListLoss against a naive loop over the union of the batch and the memory.

The reference walks over every (query, gallery row) pair with scalar torch float64 operations:
the gallery is the batch followed by the memory rows, the query's own batch row is skipped by
position and every other row of the same sample (a copy in the batch, an older one in the memory)
by dataset index. ``gradient="paper"``: the
gallery and the weights are detached (constants); ``gradient="autograd"``: the batch rows are
live as queries and as gallery, the memory rows are constants.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rankedlist.losses import MemoryBank, MemoryRankedListLoss, RankedListLoss


def naive_union(x, y, ids, mem, mem_y, mem_ids, mode, *, margin=0.4, alpha=None, Tn=10.0, Tp=0.0,
                lam=1.0, normalize=True):  # fmt: skip
    """Mean over the queries of L_P + lam L_N over batch + memory, and the active counts."""
    alpha = 1.0 + margin / 2.0 if alpha is None else alpha
    b = alpha - margin

    def unit(row):
        return row / row.norm() if normalize else row

    f = [unit(row) for row in x]
    gallery = [(f[j] if mode == "autograd" else f[j].detach(), int(y[j]), int(ids[j]), j)
               for j in range(len(f))]  # fmt: skip
    gallery += [
        (unit(m), int(my), int(mi), None) for m, my, mi in zip(mem, mem_y, mem_ids, strict=True)
    ]

    def const(t):
        return t.detach() if mode == "paper" else t

    total, n_pos, n_neg = 0.0, 0, 0
    for i, fi in enumerate(f):
        pos, neg = [], []
        for g, gy, g_id, batch_row in gallery:
            if batch_row == i or g_id == int(ids[i]):
                continue  # the query itself, or another copy of the same sample
            d = (fi - g).norm()
            if gy == int(y[i]) and d > b:
                pos.append(d)
            elif gy != int(y[i]) and d < alpha:
                neg.append(d)
        n_pos, n_neg = n_pos + len(pos), n_neg + len(neg)
        loss_i = 0.0
        if pos:
            v = [torch.exp(const(Tp * (d - b))) for d in pos]
            loss_i = loss_i + sum(w * (d - b) for w, d in zip(v, pos, strict=True)) / sum(v)
        if neg:
            w = [torch.exp(const(Tn * (alpha - d))) for d in neg]
            loss_i = loss_i + lam * sum(
                wj * (alpha - d) for wj, d in zip(w, neg, strict=True)
            ) / sum(w)
        total = total + loss_i
    n = len(f)
    return total / n, n_pos / n, n_neg / n


def make_case(n=10, n_mem=23, classes=3, dim=5, seed=0):
    """A batch and a memory. Batch rows 7 and 8 are copies (perturbed: augmented apart) of the
    samples of rows 2 and 5, as the P x K sampler repeats a small class's images; the memory holds
    older copies of some of the batch's samples, one of them twice, and rows of other samples."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    ids = torch.randperm(50, generator=gen)[:n]
    for row, first in ((7, 2), (8, 5)):  # copies far apart: active positives unless excluded
        x[row] = -x[first] + 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64)
        y[row], ids[row] = y[first], ids[first]
    mem = torch.randn(n_mem, dim, generator=gen, dtype=torch.float64)
    mem_y = torch.randint(0, classes, (n_mem,), generator=gen)
    mem_ids = 100 + torch.arange(n_mem)
    for slot, row in ((0, 0), (5, 3), (9, 3), (17, n - 1)):  # older copies of batch samples
        mem[slot] = x[row] + 1.5 * torch.randn(dim, generator=gen, dtype=torch.float64)
        mem_y[slot], mem_ids[slot] = y[row], ids[row]
    return x, y, ids, mem, mem_y, mem_ids


def loaded_loss(mem, mem_y, mem_ids, **options):
    """A loss whose memory holds ``mem``, filled by hand the way the loss fills it: rows as the
    loss uses them (L2-normalised). The memory has room for a batch of up to 16 rows besides
    ``mem``, so such a batch is ranked against all of ``mem``."""
    bank = MemoryBank(size=mem.shape[0] + 16, dim=mem.shape[1], dtype=torch.float64)
    bank.enqueue(F.normalize(mem, dim=1) if options.get("normalize", True) else mem, mem_y, mem_ids)
    return MemoryRankedListLoss(RankedListLoss(**options), bank)


HYPER = [
    {},
    {"Tp": 2.0, "lam": 0.5},
    {"alpha": 1.3, "margin": 0.2, "Tn": 5.0},
    {"normalize": False, "alpha": 3.0, "margin": 1.0},  # raw rows: distances of order 3
]


@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("mode", ["paper", "autograd"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_batch_plus_memory_matches_a_naive_loop_over_the_union(hyper, mode, chunk):
    _check_against_the_union(hyper, mode, chunk)


def _check_against_the_union(hyper: dict, mode: str, chunk: int | None) -> None:
    """Loss, gradient and active-pair counts against the naive loop over batch + memory."""
    x, y, ids, mem, mem_y, mem_ids = make_case(seed=len(hyper) + (chunk or 0))
    xr = x.clone().requires_grad_(True)
    want, want_pos, want_neg = naive_union(xr, y, ids, mem, mem_y, mem_ids, mode, **hyper)
    want.backward()

    loss_fn = loaded_loss(mem, mem_y, mem_ids, gradient=mode, chunk_size=chunk, **hyper)
    xo = x.clone().requires_grad_(True)
    got = loss_fn(xo, y, ids)
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-9, atol=1e-12)
    assert loss_fn.last_stats["active_pos"] == pytest.approx(want_pos)
    assert loss_fn.last_stats["active_neg"] == pytest.approx(want_neg)
    assert want_pos > 0 and want_neg > 0


def test_older_copies_of_the_query_are_excluded_by_index():
    x, y, ids, mem, mem_y, mem_ids = make_case(seed=3)
    copies = mem_ids == ids[3]
    assert int(copies.sum()) == 2
    with_copies = loaded_loss(mem, mem_y, mem_ids, reduction="none")(x, y, ids)
    # Query 3's ranked list is the same without those rows (other queries do see them)...
    without = loaded_loss(mem[~copies], mem_y[~copies], mem_ids[~copies], reduction="none")
    assert float(without(x, y, ids)[3]) == pytest.approx(float(with_copies[3]), abs=1e-12)
    # ...while the same rows under another sample's index are active positives of query 3.
    relabelled = mem_ids.clone()
    relabelled[copies] = 999
    other = loaded_loss(mem, mem_y, relabelled, reduction="none")(x, y, ids)
    assert abs(float(other[3]) - float(with_copies[3])) > 1e-3


def test_autograd_memory_rows_are_constants():
    """The memory rows enter the distances and weights but receive no gradient: the loss equals
    a plain RLL on batch + memory where the memory rows are detached leaves."""
    x, y, ids, mem, mem_y, mem_ids = make_case(seed=5)
    keep = torch.isin(mem_ids, ids, invert=True)  # no copies, so plain RLL sees the same lists
    mem, mem_y, mem_ids = mem[keep], mem_y[keep], mem_ids[keep]
    xo = x.clone().requires_grad_(True)
    loaded_loss(mem, mem_y, mem_ids, gradient="autograd")(xo, y, ids).backward()

    xr = x.clone().requires_grad_(True)
    mr = mem.clone().requires_grad_(True)
    gallery = torch.cat([xr, mr])
    RankedListLoss(gradient="autograd")(
        xr, y, gallery, torch.cat([y, mem_y]), self_index=torch.arange(len(y)),
        indices=ids, ref_indices=torch.cat([ids, mem_ids]),
    ).backward()  # fmt: skip
    assert mr.grad.abs().max() > 0  # live memory rows would receive gradient...
    # ...and would change nothing for the batch rows: they are leaves either way.
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["paper", "autograd"])
def test_empty_memory_is_exactly_the_plain_loss(mode):
    x, y, ids, *_ = make_case(seed=7)
    loss_fn = MemoryRankedListLoss(
        RankedListLoss(gradient=mode), MemoryBank(size=40, dim=5, dtype=torch.float64)
    )
    xo, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = loss_fn(xo, y, ids)
    want = RankedListLoss(gradient=mode)(xr, y, indices=ids)
    got.backward()
    want.backward()
    assert torch.equal(got, want) and torch.equal(xo.grad, xr.grad)
    assert loss_fn.last_stats["memory_fill"] == len(y)  # the batch was enqueued afterwards


def test_warm_up_then_memory_and_eval_mode_leaves_it_alone():
    x, y, ids, *_ = make_case(seed=8)
    loss_fn = MemoryRankedListLoss(RankedListLoss(), MemoryBank(size=25, dim=5, start=2))
    plain = RankedListLoss()(x.float(), y, indices=ids)
    for _ in range(2):  # warm-up: the plain loss, nothing enqueued
        assert torch.equal(loss_fn(x.float(), y, ids), plain)
        assert loss_fn.memory.filled == 0 and loss_fn.last_stats["memory_fill"] == 0
    loss_fn(x.float(), y, ids)  # first iteration with the memory: empty, then filled
    assert loss_fn.memory.filled == 10
    loss_fn.eval()
    state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    assert torch.equal(loss_fn(x.float(), y, ids), plain)  # evaluation: the batch alone
    assert all(torch.equal(v, loss_fn.state_dict()[k]) for k, v in state.items())
    loss_fn.train()
    x2 = x.float() + 0.3
    assert not torch.equal(loss_fn(x2, y, ids + 1000), RankedListLoss()(x2, y, indices=ids))
    assert loss_fn.memory.filled == 20


def test_bad_input_raises():
    x, y, ids, *_ = make_case(seed=9)
    loss_fn = MemoryRankedListLoss(RankedListLoss(), MemoryBank(size=25, dim=5))
    with pytest.raises(ValueError, match="dataset index"):
        loss_fn(x, y)
    with pytest.raises(ValueError, match="width 5"):
        loss_fn(torch.randn(10, 7), y, ids)
    with pytest.raises(TypeError, match="integers"):
        loss_fn(x, y, ids.double())
    with pytest.raises(ValueError, match="10 entries"):
        loss_fn(x, y, ids[:4])
    with pytest.raises(TypeError, match="RankedListLoss"):
        MemoryRankedListLoss(torch.nn.Identity(), MemoryBank(size=4, dim=5))
    assert loss_fn.memory.filled == 0 and int(loss_fn.memory.step) == 0  # nothing half-done


def test_float32_memory_matches_float64_reference():
    x, y, ids, mem, mem_y, mem_ids = make_case(seed=11)
    want, _, _ = naive_union(x, y, ids, mem, mem_y, mem_ids, "paper")
    bank = MemoryBank(size=40, dim=5)
    bank.enqueue(F.normalize(mem.float(), dim=1), mem_y, mem_ids)
    got = MemoryRankedListLoss(RankedListLoss(), bank)(x.float(), y, ids)
    assert math.isclose(float(got), float(want), rel_tol=1e-5, abs_tol=1e-6)


def test_compacted_chunks_match_the_naive_loop(monkeypatch):
    """A large, mostly trivial memory: each chunk of queries is ranked against its candidate
    columns only (fewer than the gallery's), with the same result as the loop over everything."""
    import rankedlist.losses._paper_chunk as chunks

    widths = []
    original = chunks.paper_chunk
    monkeypatch.setattr(
        chunks,
        "paper_chunk",
        lambda chunk, *a, **k: widths.append(chunk.reference.shape[0]) or original(chunk, *a, **k),
    )
    gen = torch.Generator().manual_seed(21)
    n, n_mem, dim = 12, 200, 64
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % 6
    ids = torch.arange(n)
    mem = torch.randn(n_mem, dim, generator=gen, dtype=torch.float64)
    mem_y = torch.randint(6, 40, (n_mem,), generator=gen)
    mem_ids = 100 + torch.arange(n_mem)
    for slot in range(8):  # near other-class rows (active negatives) and older copies
        mem[slot] = x[slot] + 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64)
        mem_y[slot] = (y[slot] + 1) % 6
    for slot, row in ((8, 0), (9, 5), (10, 5)):
        mem[slot] = -x[row]  # far: an active positive unless excluded
        mem_y[slot], mem_ids[slot] = y[row], ids[row]
    mem[11], mem_y[11] = -x[1], y[1]  # far, same class, another sample: an active positive
    xr = x.clone().requires_grad_(True)
    want, want_pos, want_neg = naive_union(xr, y, ids, mem, mem_y, mem_ids, "paper")
    want.backward()
    loss_fn = loaded_loss(mem, mem_y, mem_ids, chunk_size=4)
    xo = x.clone().requires_grad_(True)
    got = loss_fn(xo, y, ids)
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-9, atol=1e-12)
    assert loss_fn.last_stats["active_neg"] == pytest.approx(want_neg) and want_neg > 0
    assert loss_fn.last_stats["active_pos"] == pytest.approx(want_pos) and want_pos > 0
    assert len(widths) == 3 and max(widths) < n + n_mem  # every chunk was compacted


def test_a_chunk_without_candidates_gives_zero_loss_and_gradient():
    """Queries whose labels are not in the gallery and that are far from all of it: nothing to
    rank (also with a temperature whose weights need a row shift)."""
    from rankedlist.losses._inputs import HyperParameters
    from rankedlist.losses.ranked_list_loss import compute_ranked_list_loss

    x = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]], requires_grad=True)
    g = F.normalize(torch.tensor([[-1.0, 0.2, 0.0], [-1.0, -0.1, 0.3], [0.0, -1.0, -1.0]]), dim=1)
    hp = HyperParameters(margin=0.4, alpha=1.2, Tn=60.0, Tp=0.0, lam=1.0)
    loss, stats = compute_ranked_list_loss(
        x, torch.tensor([0, 1]), hp, g, torch.tensor([2, 3, 4]), memory_gallery=True
    )
    loss.backward()
    assert float(loss.detach()) == 0 and stats["active_neg"] == 0 and stats["active_pos"] == 0
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_a_memory_filled_by_hand_with_raw_rows_is_refused():
    x, y, ids, mem, mem_y, mem_ids = make_case(seed=12)
    bank = MemoryBank(size=30, dim=5, dtype=torch.float64)
    bank.enqueue(mem * 3, mem_y, mem_ids)  # not normalised: not what the loss keeps
    with pytest.raises(ValueError, match="L2-normalised"):
        MemoryRankedListLoss(RankedListLoss(), bank)(x, y, ids)


@pytest.fixture
def tiny_tiles(monkeypatch):
    """Column tiles of a few columns, so that small cases cross many tile edges."""
    from rankedlist.losses import _paper_chunk

    monkeypatch.setattr(_paper_chunk, "_TILE_ELEMENTS", 8)
    monkeypatch.setattr(_paper_chunk, "_MIN_TILE_COLS", 5)


@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("chunk", [None, 3])
def test_column_tiles_match_the_naive_loop_over_the_union(tiny_tiles, hyper, chunk):
    """The CPU kernel's column tiles (sums accumulated over tiles, excluded pairs per tile)."""
    _check_against_the_union(hyper, "paper", chunk)


@pytest.mark.parametrize("mode", ["paper", "autograd"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_plain_loss_given_indices_skips_copies_in_the_batch(mode, chunk):
    """RankedListLoss itself, given the samples' dataset indices: the loss, gradient and active
    pairs of the naive loop that skips every pair of one sample (rows 2 and 7, 5 and 8)."""
    x, y, ids, mem, *_ = make_case(seed=13)
    xr = x.clone().requires_grad_(True)
    none = torch.zeros(0, dtype=torch.long)
    want, want_pos, want_neg = naive_union(xr, y, ids, mem[:0], none, none, mode)
    want.backward()
    loss_fn = RankedListLoss(gradient=mode, chunk_size=chunk)
    xo = x.clone().requires_grad_(True)
    got = loss_fn(xo, y, indices=ids)
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-9, atol=1e-12)
    assert loss_fn.last_stats["active_pos"] == pytest.approx(want_pos)
    assert loss_fn.last_stats["active_neg"] == pytest.approx(want_neg)
    # the copies are far apart: without the indices they are active positives of each other
    assert abs(float(RankedListLoss(gradient=mode)(x, y)) - float(want.detach())) > 1e-3


@pytest.mark.parametrize("mode", ["paper", "autograd"])
def test_a_full_memory_gives_the_newest_rows_beside_the_batch(mode):
    """A memory of M rows holds the current batch too (XBM's and PML's memory size): a batch of
    10 rows is ranked against itself and the newest M - 10 rows, here the last 7 of 23 rows
    enqueued into a ring of 17 (they wrap around its end; one is an older copy of row 9)."""
    x, y, ids, mem, mem_y, mem_ids = make_case(seed=14)
    bank = MemoryBank(size=17, dim=5, dtype=torch.float64)
    for part in (slice(0, 13), slice(13, 23)):
        bank.enqueue(F.normalize(mem[part], dim=1), mem_y[part], mem_ids[part])
    assert int(bank.next_row) == 6  # rows 16..22 sit at ring slots 16 and 0..5
    xr = x.clone().requires_grad_(True)
    want, want_pos, _ = naive_union(xr, y, ids, mem[16:], mem_y[16:], mem_ids[16:], mode)
    want.backward()
    loss_fn = MemoryRankedListLoss(RankedListLoss(gradient=mode), bank)
    xo = x.clone().requires_grad_(True)
    got = loss_fn(xo, y, ids)
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-9, atol=1e-12)
    assert loss_fn.last_stats["active_pos"] == pytest.approx(want_pos)
    assert loss_fn.last_stats["memory_fill"] == 17


def test_a_batch_larger_than_the_memory_is_refused():
    x, y, ids, *_ = make_case(seed=15)
    loss_fn = MemoryRankedListLoss(RankedListLoss(), MemoryBank(size=8, dim=5, start=1))
    loss_fn(x.float(), y, ids)  # the warm-up does not use the memory: no error yet
    with pytest.raises(ValueError) as err:
        loss_fn(x.float(), y, ids)
    assert str(err.value) == (
        "a batch of 10 rows does not fit a memory of 8 (it holds the current batch too): set "
        "loss.memory_size to at least the global batch"
    )
    assert loss_fn.memory.filled == 0 and int(loss_fn.memory.step) == 1  # nothing half-done
