"""The public oracles T1 and T3 of rll-spec.md section 5, to 1e-5."""

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


def test_t1_distances_match_the_spec():
    x, _ = t1_points()
    f = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(f, f)
    expected = {(0, 1): 1.0, (0, 2): 0.517638, (1, 2): 0.517638, (0, 3): 1.532089,
                (1, 3): 0.684040, (2, 3): 1.147153}  # fmt: skip
    for (i, j), value in expected.items():
        assert d[i, j].item() == pytest.approx(value, abs=1e-6)


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
