"""Cross-check against pytorch-metric-learning's RankedListLoss (a dev dependency).

PML computes (1 - imbalance) L_P + imbalance L_N with imbalance = 0.5, differentiates through the
weights and the gallery (our gradient="autograd") and adds 1e-5 per column to each denominator.
So with lam = 1 our loss is twice PML's, up to those epsilon terms, on batches
without zero distances (PML drops negatives at distance exactly 0).
"""

import warnings

import pytest
import torch

from rankedlist import RankedListLoss

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

CASES = [
    {"margin": 0.4, "Tn": 10.0},
    {"margin": 0.4, "Tn": 10.0, "alpha": 1.0, "Tp": 2.0},
    {"margin": 0.2, "Tn": 5.0, "alpha": 1.4},
    {"margin": 0.3, "Tn": 0.0, "Tp": 0.0},
]


def pml_loss(**hyper):
    with warnings.catch_warnings():
        # PML warns about temperatures above 5 (overflow risk in float16); fine in float32/64.
        warnings.filterwarnings("ignore", message="Values of Tp or Tn are too high")
        return pml_losses.RankedListLoss(imbalance=0.5, **hyper)


def test_pml_constructor_warns_above_temperature_five():
    with pytest.warns(UserWarning, match="too high"):
        pml_losses.RankedListLoss(margin=0.4, Tn=10.0)


@pytest.mark.parametrize("hyper", CASES, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
@pytest.mark.parametrize("n,classes", [(24, 6), (60, 20), (32, 2)])
def test_twice_pml_values_and_gradients(hyper, n, classes):
    gen = torch.Generator().manual_seed(n + classes)
    x = torch.randn(n, 32, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % classes
    assert torch.pdist(x / x.norm(dim=1, keepdim=True)).min() > 1e-3  # no zero distances

    ours_x = x.clone().requires_grad_(True)
    ours = RankedListLoss(gradient="autograd", lam=1.0, **hyper)(ours_x, y)
    ours.backward()
    theirs_x = x.clone().requires_grad_(True)
    theirs = pml_loss(**hyper)(theirs_x, y)
    theirs.backward()

    assert ours.item() > 0
    assert ours.item() == pytest.approx(2 * theirs.item(), rel=1e-3)
    torch.testing.assert_close(ours_x.grad, 2 * theirs_x.grad, rtol=1e-3,
                               atol=1e-3 * ours_x.grad.abs().max().item())  # fmt: skip
