"""RankedListLoss properties: gradcheck, invariances, the reference-set path, chunks, dtypes."""

import pytest
import torch

from rankedlist import RankedListLoss, ranked_list_loss
from rankedlist.losses._kernels import autocast_disabled


def make_batch(n, classes, dim=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=dtype)
    y = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]
    return x, y


def loss_and_grad(loss_fn, x, y, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(x, y, *args, **kwargs)
    loss.sum().backward()
    return loss.detach(), x.grad


# ---------------------------------------------------------------- gradcheck (autograd semantics)


@pytest.mark.parametrize("reduction", ["mean", "none", "official"])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_autograd_mode(reduction, normalize):
    x, y = make_batch(8, 3, dim=5, seed=1, dtype=torch.float64)
    if not normalize:
        x = x * 0.35  # distances around the boundaries so that both sets are active
    x.requires_grad_(True)

    def fn(inp):
        return ranked_list_loss(inp, y, gradient="autograd", reduction=reduction, Tp=1.5,
                                lam=0.7, normalize=normalize)  # fmt: skip

    assert ranked_list_loss(x, y, gradient="autograd", normalize=normalize).item() > 0
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)


def test_gradcheck_autograd_mode_with_reference_set_and_chunks():
    x, y = make_batch(6, 2, dim=4, seed=2, dtype=torch.float64)
    other, other_y = make_batch(5, 3, dim=4, seed=3, dtype=torch.float64)
    x.requires_grad_(True)
    other.requires_grad_(True)
    self_index = torch.arange(6)

    def fn(inp, extra):
        ref = torch.cat([inp, extra])
        return ranked_list_loss(inp, y, ref, torch.cat([y, other_y]), self_index=self_index,
                                gradient="autograd", Tn=5.0, chunk_size=4)  # fmt: skip

    assert torch.autograd.gradcheck(fn, (x, other), eps=1e-6, atol=1e-6)


def test_autograd_mode_equals_paper_mode_for_a_fixed_gallery_and_tn_tp_zero():
    # With Tn = Tp = 0 the weights are constant and, with a detached gallery given as ref_emb,
    # both semantics must produce the same query gradient.
    x, y = make_batch(12, 3, seed=4, dtype=torch.float64)
    gallery = x.detach().clone()
    grads = []
    for gradient in ("paper", "autograd"):
        loss_fn = RankedListLoss(gradient=gradient, Tn=0.0, Tp=0.0)
        _, grad = loss_and_grad(loss_fn, x, y, gallery, y, self_index=torch.arange(12))
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_invariant_to_row_scaling(gradient):
    x, y = make_batch(20, 5, seed=5, dtype=torch.float64)
    scale = 0.1 + 10 * torch.rand(20, 1, dtype=torch.float64)
    loss_fn = RankedListLoss(gradient=gradient, reduction="none")
    a, grad_a = loss_and_grad(loss_fn, x, y)
    b, grad_b = loss_and_grad(loss_fn, x * scale, y)
    torch.testing.assert_close(a, b)
    # d loss / d (s x) = (d loss / d x) / s for a scale-invariant loss
    torch.testing.assert_close(grad_a / scale, grad_b)


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_equivariant_to_permutation_and_invariant_to_relabelling(gradient):
    x, y = make_batch(24, 6, seed=6, dtype=torch.float64)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    loss_fn = RankedListLoss(gradient=gradient, reduction="none", Tp=1.0)
    a, grad_a = loss_and_grad(loss_fn, x, y)
    b, grad_b = loss_and_grad(loss_fn, x[perm], y[perm])
    torch.testing.assert_close(a[perm], b)
    torch.testing.assert_close(grad_a[perm], grad_b)
    relabel = torch.tensor([1000, -5, 42, 7, 3, 99999999999])  # any bijection of the class ids
    c, grad_c = loss_and_grad(loss_fn, x, relabel[y])
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(grad_a, grad_c)
    for reduction in ("mean", "official"):
        fn = RankedListLoss(gradient=gradient, reduction=reduction)
        torch.testing.assert_close(fn(x, y), fn(x[perm], relabel[y][perm]))


# ---------------------------------------------------------------- the reference-set path


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
@pytest.mark.parametrize("reduction", ["mean", "none", "official"])
def test_batch_as_its_own_reference_set(gradient, reduction):
    x, y = make_batch(15, 4, seed=7, dtype=torch.float64)
    loss_fn = RankedListLoss(gradient=gradient, reduction=reduction, Tp=0.5)
    base, grad_base = loss_and_grad(loss_fn, x, y)
    stats = dict(loss_fn.last_stats)

    # ref_emb is embeddings: the same call as no ref_emb (the self pair excluded by index).
    xx = x.clone().requires_grad_(True)
    same = loss_fn(xx, y, xx, y)
    same.sum().backward()
    torch.testing.assert_close(same.detach(), base)
    torch.testing.assert_close(xx.grad, grad_base)
    assert loss_fn.last_stats == pytest.approx(stats)

    # A copy of the batch as ref_emb with self_index = arange: the same values.
    copy, _ = loss_and_grad(loss_fn, x, y, x.clone(), y, self_index=torch.arange(15))
    torch.testing.assert_close(copy, base)


def test_distributed_split_reproduces_the_single_process_gradient():
    # Two "ranks" each rank their local queries against the gathered batch; averaging their
    # gradients (what DDP does) must give the single-process gradient of the mean loss.
    x, y = make_batch(16, 4, seed=8, dtype=torch.float64)
    loss_fn = RankedListLoss()
    full, grad_full = loss_and_grad(loss_fn, x, y)
    n_local, world = 8, 2
    losses, grad = [], torch.zeros_like(x)
    for rank in range(world):
        local = slice(rank * n_local, (rank + 1) * n_local)
        xl = x[local].clone().requires_grad_(True)
        loss = loss_fn(xl, y[local], x, y, self_index=rank * n_local + torch.arange(n_local))
        loss.backward()
        losses.append(loss.detach())
        grad[local] = xl.grad / world
    torch.testing.assert_close(torch.stack(losses).mean(), full)
    torch.testing.assert_close(grad, grad_full)


# ---------------------------------------------------------------- chunking, dtypes, statistics


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunked_equals_unchunked(gradient, chunk_size):
    x, y = make_batch(20, 5, seed=9, dtype=torch.float64)
    ref_emb, ref_y = make_batch(11, 7, seed=10, dtype=torch.float64)
    for args in ((), (ref_emb, ref_y)):
        for reduction in ("mean", "official"):
            whole = RankedListLoss(gradient=gradient, reduction=reduction, Tp=1.0)
            parts = RankedListLoss(
                gradient=gradient, reduction=reduction, Tp=1.0, chunk_size=chunk_size
            )
            a, grad_a = loss_and_grad(whole, x, y, *args)
            b, grad_b = loss_and_grad(parts, x, y, *args)
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(grad_a, grad_b)
            assert whole.last_stats == pytest.approx(parts.last_stats)


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Tn", [10.0, 20.0])
def test_half_precision_agrees_with_float32(gradient, dtype, Tn):
    x, y = make_batch(64, 16, dim=32, seed=11)
    x = x.to(dtype)  # the float32 run below sees exactly the same (rounded) values
    loss_fn = RankedListLoss(gradient=gradient, Tn=Tn)
    low, grad_low = loss_and_grad(loss_fn, x, y)
    high, grad_high = loss_and_grad(loss_fn, x.float(), y)
    assert low.dtype == torch.float32 and grad_low.dtype == dtype
    assert torch.isfinite(low) and torch.isfinite(grad_low).all()
    torch.testing.assert_close(low, high, rtol=1e-5, atol=1e-6)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(
        grad_low.float(), grad_high, rtol=tol, atol=tol * grad_high.abs().max()
    )


AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]  # CPU autocast supports both (torch >= 2.1)


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("backward_inside", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_immune_to_an_enclosing_autocast(gradient, autocast_dtype, backward_inside, chunk_size):
    # Under autocast the distance and gradient products would run in bfloat16/float16: gradients
    # off by ~3e-3 relative. The loss must give the float32 values and gradients computed outside
    # autocast, with a reference set too, whether backward() is called inside the region or not.
    x, y = make_batch(24, 6, dim=32, seed=15)
    ref_emb, ref_y = make_batch(17, 6, dim=32, seed=16)
    loss_fn = RankedListLoss(gradient=gradient, Tp=1.0, reduction="official", chunk_size=chunk_size)
    for args in ((), (ref_emb, ref_y)):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, *args[:1])]
        want = loss_fn(leaves[0], y, *leaves[1:], *args[1:])
        want_grads = torch.autograd.grad(want, leaves, allow_unused=True)
        want_stats = dict(loss_fn.last_stats)

        leaves = [t.detach().clone().requires_grad_(True) for t in (x, *args[:1])]
        with torch.autocast("cpu", dtype=autocast_dtype):
            got = loss_fn(leaves[0], y, *leaves[1:], *args[1:])
            if backward_inside:
                got.backward()
        if not backward_inside:
            got.backward()
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        assert loss_fn.last_stats == want_stats
        for leaf, want_grad in zip(leaves, want_grads, strict=True):
            if want_grad is None:  # the paper semantics detach the reference set
                assert leaf.grad is None
                continue
            assert leaf.grad.dtype == torch.float32
            torch.testing.assert_close(
                leaf.grad, want_grad, rtol=1e-6, atol=1e-6 * want_grad.abs().max().item()
            )


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_autocast_is_turned_off_for_the_inputs_device_type(device_type):
    # The switch is device-generic: it names the device type of the embeddings. The autocast
    # flag is set by hand, which needs no CUDA device (torch.autocast("cuda") would refuse).
    prev = torch.is_autocast_enabled(device_type)
    torch.set_autocast_enabled(device_type, True)
    try:
        with autocast_disabled(torch.device(device_type)):
            inside = torch.is_autocast_enabled(device_type)
        after = torch.is_autocast_enabled(device_type)
    finally:
        torch.set_autocast_enabled(device_type, prev)
    assert not inside and after
    with autocast_disabled(torch.device("meta")):  # no autocast for this device type: a no-op
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("gradient", ["paper", "autograd"])
@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES)
def test_immune_to_an_enclosing_cuda_autocast(gradient, autocast_dtype):
    x, y = make_batch(300, 40, dim=64, seed=17)
    x, y = x.cuda(), y.cuda()
    loss_fn = RankedListLoss(gradient=gradient, Tp=1.0)
    want, want_grad = loss_and_grad(loss_fn, x, y)
    with torch.autocast("cuda", dtype=autocast_dtype):
        got, got_grad = loss_and_grad(loss_fn, x, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        got_grad, want_grad, rtol=1e-6, atol=1e-6 * want_grad.abs().max().item()
    )


def test_float64_stays_float64():
    x, y = make_batch(10, 3, dtype=torch.float64)
    loss, grad = loss_and_grad(RankedListLoss(), x, y)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64


@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_one_class_and_singleton_batches(gradient):
    x, y = make_batch(12, 1, seed=12)
    loss_fn = RankedListLoss(gradient=gradient)
    loss, grad = loss_and_grad(loss_fn, x, y)  # only positives exist
    assert loss.item() > 0 and torch.isfinite(grad).all()
    assert loss_fn.last_stats["active_neg"] == 0.0
    assert loss_fn.last_stats["active_pos"] > 0
    loss, grad = loss_and_grad(loss_fn, x, torch.arange(12))  # only negatives exist
    assert loss.item() > 0 and torch.isfinite(grad).all()
    assert loss_fn.last_stats["active_pos"] == 0.0
    single, _ = loss_and_grad(loss_fn, x[:1], y[:1])  # a batch of one: nothing to rank
    assert single.item() == 0.0


def test_stats_count_active_pairs():
    # Two classes of three points on a circle: angles chosen so the counts are known by hand.
    angles = torch.tensor([0.0, 10.0, 100.0, 180.0, 185.0, 300.0]).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], 1)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    d = torch.cdist(x, x)
    same = y[:, None] == y[None, :]
    eye = torch.eye(6, dtype=torch.bool)
    n_pos = ((d > 0.8) & same & ~eye).sum(1).double()
    n_neg = ((d < 1.2) & ~same).sum(1).double()
    loss_fn = RankedListLoss()
    per_query = RankedListLoss(reduction="none")(x, y)
    loss_fn(x, y)
    assert loss_fn.last_stats["active_pos"] == pytest.approx(n_pos.mean().item())
    assert loss_fn.last_stats["active_neg"] == pytest.approx(n_neg.mean().item())
    assert loss_fn.last_stats["nonzero_frac"] == pytest.approx(
        ((n_pos + n_neg) > 0).double().mean().item()
    )
    assert torch.equal(per_query > 0, (n_pos + n_neg) > 0)


def test_module_repr_and_defaults():
    loss_fn = RankedListLoss()
    assert (loss_fn.margin, loss_fn.alpha, loss_fn.Tn, loss_fn.Tp, loss_fn.lam) == (
        0.4, 1.2, 10.0, 0.0, 1.0,
    )  # fmt: skip
    assert loss_fn.gradient == "paper" and loss_fn.reduction == "mean" and loss_fn.normalize
    assert "margin=0.4, alpha=1.2 (1 + margin/2)," in repr(loss_fn)
    assert loss_fn.last_stats == {}


def test_repr_follows_changed_hyper_parameters():
    loss_fn = RankedListLoss()
    loss_fn.margin, loss_fn.Tn, loss_fn.reduction = 0.2, 5.0, "none"
    assert loss_fn.alpha == pytest.approx(1.1)
    text = repr(loss_fn)
    assert f"margin=0.2, alpha={1 + 0.2 / 2} (1 + margin/2), Tn=5.0," in text
    assert "reduction='none'" in text
    loss_fn.alpha = 1.3  # an explicit alpha: no longer tied to the margin
    loss_fn.margin = 0.6
    assert "margin=0.6, alpha=1.3, Tn=5.0," in repr(loss_fn)


def test_no_grad_forward_matches():
    x, y = make_batch(30, 6, seed=13)
    loss_fn = RankedListLoss(Tp=1.0)
    with torch.no_grad():
        a = loss_fn(x, y)
    b, _ = loss_and_grad(loss_fn, x, y)
    torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_cuda_agrees_with_cpu(gradient):
    x, y = make_batch(300, 40, dim=64, seed=14)
    loss_fn = RankedListLoss(gradient=gradient, Tp=1.0, chunk_size=128)
    cpu, grad_cpu = loss_and_grad(loss_fn, x, y)
    gpu, grad_gpu = loss_and_grad(loss_fn, x.cuda(), y.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_gpu.cpu(), grad_cpu, rtol=1e-3, atol=1e-6)
