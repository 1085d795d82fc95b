"""Two small cases whose loss values were worked out by hand (T1: a batch at the paper's
defaults, T3: a reference set), to 1e-5 (distances to 1e-6)."""

import math

import pytest
import torch

from rankedlist import RankedListLoss, ranked_list_loss

GRADIENTS = ["paper", "autograd"]


def t1_points(dtype=torch.float64):
    """(angle in degrees, radius, label) of the four T1 points."""
    pts = [(0.0, 2.0, 0), (60.0, 0.5, 0), (30.0, 3.0, 1), (100.0, 1.0, 1)]
    x = torch.tensor(
        [[r * math.cos(math.radians(a)), r * math.sin(math.radians(a))] for a, r, _ in pts],
        dtype=dtype,
    )
    y = torch.tensor([label for *_, label in pts])
    return x, y


T1_DISTANCES = {(0, 1): 1.0, (0, 2): 0.517638, (1, 2): 0.517638, (0, 3): 1.532089,
                (1, 3): 0.684040, (2, 3): 1.147153}  # fmt: skip


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_t1_distances_match_the_spec(gradient, dtype):
    # The loss's own distances (normalisation included), read off its per-query values: query i
    # ranked against the single reference row j under another label, with alpha = 3 > every
    # distance, has exactly one active negative and L(i) = L_N(i) = alpha - d_ij.
    x, _ = t1_points(dtype)
    alpha = 3.0
    loss_fn = RankedListLoss(alpha=alpha, margin=0.0, gradient=gradient, reduction="none")
    for (i, j), want in T1_DISTANCES.items():
        for q, r in ((i, j), (j, i)):  # d is symmetric
            per_query = loss_fn(x[q : q + 1], torch.tensor([0]), x[r : r + 1], torch.tensor([1]))
            assert loss_fn.last_stats == {"active_pos": 0.0, "active_neg": 1.0, "nonzero_frac": 1.0}
            assert alpha - per_query.item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_t1_active_sets_follow_the_spec_distances(gradient):
    # At the defaults (b = 0.8, alpha = 1.2) the worked distances decide the active sets:
    # positives d01 = 1.0 > b (both queries of class 0), d23 = 1.147 > b; negatives below 1.2:
    # query 0: d02; query 1: d12, d13; query 2: d02, d12; query 3: d13.
    x, y = t1_points()
    loss_fn = RankedListLoss(gradient=gradient)
    loss_fn(x, y)
    assert loss_fn.last_stats["active_pos"] == pytest.approx(4 / 4)
    assert loss_fn.last_stats["active_neg"] == pytest.approx(6 / 4)
    assert loss_fn.last_stats["nonzero_frac"] == 1.0


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_t1_per_query_and_batch(gradient, dtype):
    x, y = t1_points(dtype)
    per_query = RankedListLoss(gradient=gradient, reduction="none")(x, y)
    expected = torch.tensor([0.882362, 0.855867, 1.029515, 0.863113], dtype=torch.float64)
    torch.testing.assert_close(per_query.double(), expected, rtol=0, atol=1e-5)
    batch = RankedListLoss(gradient=gradient)(x, y)
    assert batch.item() == pytest.approx(0.907714, abs=1e-5)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_t1_variants(gradient):
    x, y = t1_points()
    assert ranked_list_loss(x, y, Tn=0.0, gradient=gradient).item() == pytest.approx(
        0.893538, abs=1e-5
    )
    # margin 0.2 with alpha = 1 + m/2 = 1.1 (alpha=None resolves to it).
    loss_fn = RankedListLoss(margin=0.2, gradient=gradient)
    assert loss_fn.alpha == pytest.approx(1.1)
    assert loss_fn(x, y).item() == pytest.approx(0.707714, abs=1e-5)
    # The same when the margin is changed after construction: alpha = None follows it.
    loss_fn = RankedListLoss(gradient=gradient)
    loss_fn.margin = 0.2
    assert loss_fn(x, y).item() == pytest.approx(0.707714, abs=1e-5)


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("reduction", ["mean", "none", "official"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_t3_all_trivial_gives_exact_zero(gradient, reduction, dtype):
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], dtype=dtype)
    x.requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1])
    loss_fn = RankedListLoss(gradient=gradient, reduction=reduction)
    loss = loss_fn(x, y)
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype
    assert torch.all(x.grad == 0)
    assert loss_fn.last_stats == {"active_pos": 0.0, "active_neg": 0.0, "nonzero_frac": 0.0}
