"""RankedListLoss against the naive double-loop reference of ``_naive_rll.py``, written from the
paper's definitions (per-query terms, weights, the closed-form paper gradient)."""

import numpy as np
import pytest
import torch
from _naive_rll import expected, naive_rll

from rankedlist import RankedListLoss, ranked_list_loss

HYPER = [
    {},
    {"Tp": 2.0, "lam": 0.5},
    {"alpha": 1.0, "margin": 0.3, "Tn": 5.0, "Tp": 1.0},
    {"alpha": 1.4, "margin": 0.0, "Tn": 20.0, "lam": 2.0},
    {"margin": 0.2, "Tn": 0.0},
]
BATCHES = [(6, 2), (13, 4), (24, 1), (10, 10), (40, 8)]  # (N, classes); 1: no negatives, N: none +


def make_batch(n, classes, dim=12, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=dtype) * (0.5 + torch.rand(n, 1, generator=gen))
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=gen)] * 7 - 3  # arbitrary integer ids, negatives included
    return x, y


@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("n,classes", BATCHES)
@pytest.mark.parametrize("reduction", ["mean", "none", "official"])
def test_paper_values_and_gradient_match_naive(hyper, n, classes, reduction):
    x, y = make_batch(n, classes, seed=n * 31 + classes)
    ref = naive_rll(x.numpy(), y.tolist(), **hyper)
    want_loss, want_grad = expected(ref, reduction)

    x.requires_grad_(True)
    loss_fn = RankedListLoss(reduction=reduction, **hyper)
    loss = loss_fn(x, y)
    np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), want_grad, rtol=1e-8, atol=1e-12)

    assert loss_fn.last_stats["active_pos"] == pytest.approx(ref["nP"].mean())
    assert loss_fn.last_stats["active_neg"] == pytest.approx(ref["nN"].mean())
    nonzero = (ref["LP"] + hyper.get("lam", 1.0) * ref["LN"]) > 0
    assert loss_fn.last_stats["nonzero_frac"] == pytest.approx(nonzero.mean())

    # The autograd implementation has the same forward values.
    loss_auto = RankedListLoss(reduction=reduction, gradient="autograd", **hyper)(x, y)
    np.testing.assert_allclose(loss_auto.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_float32_and_large_temperatures_use_a_stable_softmax(gradient):
    # Tn * alpha = 72 and Tp * (2 - b) = 72 exceed exp's comfortable float32 range: the row max is
    # subtracted; results must stay finite and match the float64 reference.
    hyper = {"Tn": 60.0, "Tp": 60.0, "alpha": 1.2, "margin": 0.4}
    x, y = make_batch(30, 5, seed=3)
    ref = naive_rll(x.numpy(), y.tolist(), **hyper)
    want_loss, want_grad = expected(ref, "official")
    x32 = x.float().requires_grad_(True)
    loss = ranked_list_loss(x32, y, gradient=gradient, reduction="official", **hyper)
    assert loss.item() == pytest.approx(float(want_loss), rel=1e-4)
    per_query = ranked_list_loss(x32.detach(), y, gradient=gradient, reduction="none", **hyper)
    np.testing.assert_allclose(per_query.numpy(), ref["LP"] + ref["LN"], rtol=1e-4, atol=1e-6)
    if gradient == "paper":
        loss.backward()
        np.testing.assert_allclose(x32.grad.numpy(), want_grad, rtol=1e-3, atol=1e-6)


def test_unnormalised_embeddings_match_naive():
    # Distances around alpha without normalisation; a large Tp with unbounded distances triggers
    # the row-shifted positive weights in float32.
    x, y = make_batch(20, 4, seed=5)
    x = x / x.norm(dim=1, keepdim=True) * (0.4 + 0.4 * torch.rand(20, 1, dtype=x.dtype))
    for hyper in ({"Tp": 3.0, "lam": 0.7}, {"Tp": 200.0, "Tn": 80.0, "margin": 0.1}):
        ref = naive_rll(x.numpy(), y.tolist(), normalize=False, **hyper)
        for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
            xx = x.detach().to(dtype).clone().requires_grad_(True)
            loss = ranked_list_loss(xx, y, normalize=False, **hyper)
            want_loss, want_grad = expected(ref, "mean")
            assert loss.item() == pytest.approx(float(want_loss), rel=rtol, abs=1e-7)
            loss.backward()
            np.testing.assert_allclose(xx.grad.double().numpy(), want_grad, rtol=rtol * 10,
                                       atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_duplicates_negative_at_zero_distance_is_active(gradient):
    # Row 1 duplicates row 0 with another label: a negative at distance exactly 0, active with
    # weight exp(Tn alpha), contributing alpha to L_N; rows 2/3 duplicate each other (same label).
    x = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    y = torch.tensor([0, 1, 2, 2, 0])
    ref = naive_rll(x.detach().numpy(), y.tolist())
    loss_fn = RankedListLoss(gradient=gradient, reduction="none")
    per_query = loss_fn(x, y)
    np.testing.assert_allclose(per_query.detach().numpy(), ref["LP"] + ref["LN"], rtol=1e-9)
    assert loss_fn.last_stats["active_neg"] == pytest.approx(ref["nN"].mean())
    per_query.sum().backward()
    assert torch.isfinite(x.grad).all()
    if gradient == "paper":
        np.testing.assert_allclose(x.grad.numpy(), ref["gP"] + ref["gN"], rtol=1e-9, atol=1e-12)


def test_reference_set_with_self_index_matches_naive():
    x, y = make_batch(9, 3, seed=11)
    other, other_y = make_batch(14, 5, seed=12)
    ref_emb = torch.cat([other[:5], x, other[5:]])
    ref_y = torch.cat([other_y[:5], y, other_y[5:]])
    self_index = torch.arange(9) + 5
    self_index[2] = -1  # a query whose own row is not in the reference set: nothing excluded
    hyper = {"Tp": 1.5, "lam": 0.8}
    ref = naive_rll(x.numpy(), y.tolist(), ref_emb.numpy(), ref_y.tolist(), self_index.tolist(),
                    **hyper)  # fmt: skip
    for reduction in ("mean", "none", "official"):
        want_loss, want_grad = expected(ref, reduction)
        xx = x.clone().requires_grad_(True)
        rr = ref_emb.clone().requires_grad_(True)
        loss = ranked_list_loss(xx, y, rr, ref_y, self_index=self_index, reduction=reduction,
                                **hyper)  # fmt: skip
        np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)
        loss.sum().backward()
        np.testing.assert_allclose(xx.grad.numpy(), want_grad, rtol=1e-8, atol=1e-12)
        assert rr.grad is None  # paper semantics: the gallery is detached
        auto = ranked_list_loss(xx, y, rr, ref_y, self_index=self_index, reduction=reduction,
                                gradient="autograd", **hyper)  # fmt: skip
        np.testing.assert_allclose(auto.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)
        auto.sum().backward()
        assert rr.grad is not None and rr.grad.abs().sum() > 0  # autograd: the gallery is live


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_copies_of_a_sample_in_a_gathered_batch_are_skipped_by_index(chunk_size):
    """Queries against a gathered global batch (distributed training): rows of the same dataset
    index (a sample the P x K sampler repeated, augmented differently, on this process or on
    another) are skipped like the query's own row, for every reduction."""
    x, y = make_batch(9, 3, seed=21)
    other, other_y = make_batch(14, 5, seed=22)
    ids = torch.arange(100, 109)
    other_ids = torch.arange(200, 214)
    x[6], y[6], ids[6] = -x[1] + 0.1, y[1], ids[1]  # a copy on this process, far from row 1
    other[3], other_y[3], other_ids[3] = -x[4], y[4], ids[4]  # and one on the other process
    ref_emb = torch.cat([other[:5], x, other[5:]])
    ref_y = torch.cat([other_y[:5], y, other_y[5:]])
    ref_ids = torch.cat([other_ids[:5], ids, other_ids[5:]])
    self_index = torch.arange(9) + 5
    hyper = {"Tp": 1.5, "lam": 0.8}
    ref = naive_rll(x.numpy(), y.tolist(), ref_emb.numpy(), ref_y.tolist(), self_index.tolist(),
                    ids=ids.tolist(), ref_ids=ref_ids.tolist(), **hyper)  # fmt: skip
    with_copies = naive_rll(x.numpy(), y.tolist(), ref_emb.numpy(), ref_y.tolist(),
                            self_index.tolist(), **hyper)  # fmt: skip
    assert (with_copies["nP"] - ref["nP"]).tolist() == [0, 1, 0, 0, 1, 0, 1, 0, 0]
    for reduction in ("mean", "none", "official"):
        want_loss, want_grad = expected(ref, reduction)
        xx = x.clone().requires_grad_(True)
        loss_fn = RankedListLoss(reduction=reduction, chunk_size=chunk_size, **hyper)
        loss = loss_fn(xx, y, ref_emb, ref_y, self_index, indices=ids, ref_indices=ref_ids)
        np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)
        loss.sum().backward()
        np.testing.assert_allclose(xx.grad.numpy(), want_grad, rtol=1e-8, atol=1e-12)
        assert loss_fn.last_stats["active_pos"] == pytest.approx(ref["nP"].mean())
        assert loss_fn.last_stats["active_neg"] == pytest.approx(ref["nN"].mean())


def test_indices_must_come_with_the_reference_sets_indices():
    x, y = make_batch(4, 2)
    loss_fn = RankedListLoss()
    with pytest.raises(ValueError, match="without ref_indices"):
        loss_fn(x, y, x.flip(0), y.flip(0), indices=torch.arange(4))
    with pytest.raises(ValueError, match="without indices"):
        loss_fn(x, y, ref_indices=torch.arange(4))
    with pytest.raises(ValueError, match="4 entries"):
        loss_fn(x, y, indices=torch.arange(3))
    with pytest.raises(TypeError, match="integers"):
        loss_fn(x, y, indices=torch.arange(4.0))


# ---------------------------------------------------------------- an empty reference set


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
@pytest.mark.parametrize("reduction", ["mean", "none", "official"])
@pytest.mark.parametrize("with_self_index", [False, True])
@pytest.mark.parametrize("Tn", [10.0, 60.0])  # Tn * alpha = 72 takes the row-shifted softmax
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_empty_reference_set_gives_zero_loss_and_gradient(
    gradient, reduction, with_self_index, Tn, dtype, chunk_size
):
    # A memory bank starts empty: every query has empty P* and N*, so (the definition: an empty
    # set contributes exactly 0) the loss is 0 and so is its gradient, in every mode.
    x, y = make_batch(7, 3, dim=5, seed=21, dtype=dtype)
    ref_emb, ref_y = torch.zeros(0, 5, dtype=dtype), y[:0]
    self_index = torch.full((7,), -1) if with_self_index else None
    naive = naive_rll(x.numpy(), y.tolist(), ref_emb.numpy(), [], self_index, Tn=Tn)
    want_loss, want_grad = expected(naive, reduction)

    x.requires_grad_(True)
    loss_fn = RankedListLoss(gradient=gradient, reduction=reduction, Tn=Tn, chunk_size=chunk_size)
    loss = loss_fn(x, y, ref_emb, ref_y, self_index=self_index)
    assert loss.dtype == dtype and loss.requires_grad
    assert loss.shape == ((7,) if reduction == "none" else ())
    np.testing.assert_array_equal(loss.detach().numpy(), want_loss)
    assert np.all(np.asarray(want_loss) == 0)
    loss.sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad.numpy(), want_grad)
    assert np.all(want_grad == 0)
    assert loss_fn.last_stats == {"active_pos": 0.0, "active_neg": 0.0, "nonzero_frac": 0.0}


# ---------------------------------------------------------------- hyper-parameters changed later


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_margin_changed_after_construction_moves_a_default_alpha(gradient):
    x, y = make_batch(13, 4, seed=22)
    loss_fn = RankedListLoss(gradient=gradient, reduction="none")
    loss_fn.margin = 0.2
    assert loss_fn.alpha == pytest.approx(1.1)  # alpha=None means 1 + margin/2, now 1.1
    naive = naive_rll(x.numpy(), y.tolist(), margin=0.2, alpha=1.1)
    want, _ = expected(naive, "none")
    got = loss_fn(x, y)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    fresh = RankedListLoss(margin=0.2, gradient=gradient, reduction="none")(x, y)
    torch.testing.assert_close(got, fresh, rtol=0, atol=0)
    # ... and it is not the value at the constructor's alpha (1.2) with the new margin.
    stale, _ = expected(naive_rll(x.numpy(), y.tolist(), margin=0.2, alpha=1.2), "none")
    assert np.abs(got.numpy() - stale).max() > 1e-3

    # Back to the default margin: alpha follows again.
    loss_fn.margin = 0.4
    want, _ = expected(naive_rll(x.numpy(), y.tolist(), margin=0.4, alpha=1.2), "none")
    np.testing.assert_allclose(loss_fn(x, y).numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_explicit_alpha_stays_when_the_margin_changes(gradient):
    x, y = make_batch(13, 4, seed=23)
    loss_fn = RankedListLoss(alpha=1.2, gradient=gradient, reduction="none")
    loss_fn.margin = 0.2
    assert loss_fn.alpha == 1.2
    want, _ = expected(naive_rll(x.numpy(), y.tolist(), margin=0.2, alpha=1.2), "none")
    np.testing.assert_allclose(loss_fn(x, y).numpy(), want, rtol=1e-9, atol=1e-12)
    # Setting alpha back to None makes it follow the margin again.
    loss_fn.alpha = None
    assert loss_fn.alpha == pytest.approx(1.1)
    want, _ = expected(naive_rll(x.numpy(), y.tolist(), margin=0.2, alpha=1.1), "none")
    np.testing.assert_allclose(loss_fn(x, y).numpy(), want, rtol=1e-9, atol=1e-12)


def test_other_hyper_parameters_changed_after_construction_are_used():
    x, y = make_batch(13, 4, seed=24)
    loss_fn = RankedListLoss(reduction="none")
    loss_fn.Tn, loss_fn.Tp, loss_fn.lam = 5.0, 1.5, 0.7
    want, _ = expected(naive_rll(x.numpy(), y.tolist(), Tn=5.0, Tp=1.5, lam=0.7), "none")
    np.testing.assert_allclose(loss_fn(x, y).numpy(), want, rtol=1e-9, atol=1e-12)
    loss_fn.reduction = "official"
    want, _ = expected(naive_rll(x.numpy(), y.tolist(), Tn=5.0, Tp=1.5, lam=0.7), "official")
    np.testing.assert_allclose(loss_fn(x, y).numpy(), want, rtol=1e-9, atol=1e-12)


# The buffer pairings of the gradient differ with Tn = 0 / Tp > 0 and with lam = 0 (kN = 0).
TILE_HYPER = [*HYPER, {"lam": 0.0}, {"Tn": 0.0, "Tp": 1.0}, {"lam": 0.0, "Tp": 1.0}]


@pytest.mark.parametrize(
    "hyper", TILE_HYPER, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items())
)
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_column_tiles_match_naive(monkeypatch, hyper, chunk_size):
    """The CPU kernel's column tiles (a few columns each here: the diagonal crosses tile edges)."""
    from rankedlist.losses import _paper_chunk

    monkeypatch.setattr(_paper_chunk, "_TILE_ELEMENTS", 8)
    monkeypatch.setattr(_paper_chunk, "_MIN_TILE_COLS", 3)
    x, y = make_batch(40, 8, seed=5)
    want_loss, want_grad = expected(naive_rll(x.numpy(), y.tolist(), **hyper), "official")
    x.requires_grad_(True)
    loss = RankedListLoss(reduction="official", chunk_size=chunk_size, **hyper)(x, y)
    np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), want_grad, rtol=1e-8, atol=1e-12)
