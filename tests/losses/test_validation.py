"""Every documented bad input raises a ValueError or TypeError that names the problem."""

import pytest
import torch

from rankedlist import RankedListLoss, ranked_list_loss

X = torch.randn(6, 4)
Y = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"margin": -0.1}, ValueError, "margin"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"Tn": -1.0}, ValueError, "Tn"),
        ({"Tp": -0.5}, ValueError, "Tp"),
        ({"lam": -1.0}, ValueError, "lam"),
        ({"margin": float("nan")}, ValueError, "margin"),
        ({"Tn": float("inf")}, ValueError, "Tn"),
        ({"margin": "0.4"}, TypeError, "margin"),
        ({"alpha": True}, TypeError, "alpha"),
        ({"gradient": "exact"}, ValueError, "gradient"),
        ({"reduction": "sum"}, ValueError, "reduction"),
        ({"normalize": 1}, TypeError, "normalize"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 2.5}, TypeError, "chunk_size"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        RankedListLoss(**kwargs)
    with pytest.raises(error, match=match):
        ranked_list_loss(X, Y, **kwargs)


def test_options_changed_after_construction_are_checked():
    loss_fn = RankedListLoss()
    loss_fn.reduction = "average"
    with pytest.raises(ValueError, match="reduction"):
        loss_fn(X, Y)


@pytest.mark.parametrize(
    "embeddings,labels,error,match",
    [
        (torch.randn(6), Y, ValueError, "embeddings must be 2-D"),
        (torch.randn(2, 3, 4), Y[:2], ValueError, "embeddings must be 2-D"),
        (X.numpy(), Y, TypeError, "embeddings must be a torch.Tensor"),
        (torch.ones(6, 4, dtype=torch.long), Y, TypeError, "floating-point"),
        (torch.randn(0, 4), Y[:0], ValueError, "at least one row"),
        (X, Y[:5], ValueError, "length 5"),
        (X, Y.view(3, 2), ValueError, "labels must be 1-D"),
        (X, Y.float(), TypeError, "labels must hold integers"),
        (X, Y.bool(), TypeError, "labels must hold integers"),
        (X, [0, 0, 1, 1, 2, 2], TypeError, "labels must be a torch.Tensor"),
        (X.clone().index_fill_(0, torch.tensor([2]), float("nan")), Y, ValueError, "NaN or inf"),
        (X.clone().index_fill_(0, torch.tensor([1]), float("inf")), Y, ValueError, "NaN or inf"),
        (X.clone().index_fill_(0, torch.tensor([3]), 0.0), Y, ValueError, "all-zero row"),
    ],
)
@pytest.mark.parametrize("gradient", ["paper", "autograd"])
def test_bad_inputs(embeddings, labels, error, match, gradient):
    with pytest.raises(error, match=match):
        RankedListLoss(gradient=gradient)(embeddings, labels)


def test_zero_row_is_fine_without_normalisation():
    x = X.clone()
    x[3] = 0
    assert torch.isfinite(ranked_list_loss(x, Y, normalize=False))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda f: f(X, Y, ref_labels=Y), ValueError, "ref_labels was given without ref_emb"),
        (lambda f: f(X, Y, torch.randn(5, 4)), ValueError, "without ref_labels"),
        (lambda f: f(X, Y, torch.randn(5, 3), torch.zeros(5, dtype=torch.long)), ValueError,
         "features"),
        (lambda f: f(X, Y, torch.randn(5, 4), torch.zeros(4, dtype=torch.long)), ValueError,
         "ref_labels has length 4"),
        (lambda f: f(X, Y, torch.randn(5), torch.zeros(5, dtype=torch.long)), ValueError,
         "ref_emb must be 2-D"),
        (lambda f: f(X, Y, torch.full((5, 4), float("nan")), torch.zeros(5, dtype=torch.long)),
         ValueError, "ref_emb contains NaN"),
        (lambda f: f(X, Y, torch.randn(5, 4), torch.zeros(5)), TypeError, "ref_labels must hold"),
        (lambda f: f(X, Y, self_index=torch.arange(5)), ValueError, "self_index must be 1-D"),
        (lambda f: f(X, Y, self_index=torch.arange(6.0)), TypeError, "self_index must hold"),
        (lambda f: f(X, Y, self_index=[0, 1, 2, 3, 4, 5]), TypeError, "self_index must be"),
        (lambda f: f(X, Y, self_index=torch.arange(6) + 1), ValueError, r"\[-1, 5\]"),
        (lambda f: f(X, Y, self_index=torch.arange(6) - 2), ValueError, r"\[-1, 5\]"),
    ],
)  # fmt: skip
def test_bad_reference_set_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(RankedListLoss())


def test_valid_edge_cases_do_not_raise():
    loss_fn = RankedListLoss()
    assert loss_fn(X, torch.zeros(6, dtype=torch.long)).item() >= 0  # one class
    assert loss_fn(X, torch.arange(6)).item() >= 0  # singleton classes
    assert loss_fn(X, Y.int()).item() >= 0  # any integer dtype
    assert loss_fn(X, Y, torch.randn(0, 4), Y[:0]).item() == 0  # empty reference set
    assert loss_fn(X, Y, self_index=torch.full((6,), -1)).item() >= 0
