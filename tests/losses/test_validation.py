"""Every documented bad input raises a ValueError or TypeError that names the problem."""

import numpy as np
import pytest
import torch

# The naive double-loop reference (pytest puts this directory on sys.path: no package here).
from _naive_rll import expected, naive_rll

from rankedlist import RankedListLoss, ranked_list_loss

X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 0, 1, 1, 2, 2])


BAD_OPTIONS = [
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
        ({"reduction": "average"}, ValueError, "reduction"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs,error,match", BAD_OPTIONS)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        RankedListLoss(**kwargs)
    with pytest.raises(error, match=match):
        ranked_list_loss(X, Y, **kwargs)


@pytest.mark.parametrize("kwargs,error,match", BAD_OPTIONS)
def test_options_changed_after_construction_are_checked(kwargs, error, match):
    # Setting an attribute validates it like the constructor (same error, same message) and a
    # rejected value leaves the module as it was.
    ((name, value),) = kwargs.items()
    with pytest.raises(error, match=match) as from_constructor:
        RankedListLoss(**kwargs)
    loss_fn = RankedListLoss()
    before = repr(loss_fn)
    with pytest.raises(error, match=match) as from_setter:
        setattr(loss_fn, name, value)
    assert str(from_setter.value) == str(from_constructor.value)
    assert repr(loss_fn) == before
    assert loss_fn(X, Y).item() == RankedListLoss()(X, Y).item()


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


VALID_EDGE_CASES = {
    "one class: only positives": (Y * 0, {}),
    "singleton classes: only negatives": (torch.arange(6), {}),
    "int32 labels": (Y.int(), {}),
    "empty reference set": (Y, {"ref_emb": torch.randn(0, 4), "ref_labels": Y[:0]}),
    "self_index -1: the self pair is kept": (Y, {"self_index": torch.full((6,), -1)}),
}


@pytest.mark.parametrize("case", VALID_EDGE_CASES)
@pytest.mark.parametrize("gradient", ["paper", "autograd"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_valid_edge_cases_match_the_naive_reference(case, gradient, dtype, rtol):
    labels, kwargs = VALID_EDGE_CASES[case]
    x = X.to(dtype)
    ref_emb = kwargs.get("ref_emb")
    naive = naive_rll(
        X.double().numpy(), labels.tolist(),
        None if ref_emb is None else ref_emb.double().numpy(),
        None if ref_emb is None else kwargs["ref_labels"].tolist(),
        None if "self_index" not in kwargs else kwargs["self_index"].tolist(),
    )  # fmt: skip
    want_per_query, _ = expected(naive, "none")
    want_loss, want_grad = expected(naive, "mean")
    if case.startswith("one class"):
        assert np.all(naive["nN"] == 0) and naive["nP"].sum() > 0
    if case.startswith("singleton"):
        assert np.all(naive["nP"] == 0) and naive["nN"].sum() > 0

    xx = x.clone().requires_grad_(True)
    loss_fn = RankedListLoss(gradient=gradient)
    loss = loss_fn(xx, labels, **{k: (v.to(dtype) if k == "ref_emb" else v)
                                  for k, v in kwargs.items()})  # fmt: skip
    assert loss.item() == pytest.approx(float(want_loss), rel=rtol, abs=1e-12)
    assert loss_fn.last_stats["active_pos"] == pytest.approx(naive["nP"].mean())
    assert loss_fn.last_stats["active_neg"] == pytest.approx(naive["nN"].mean())
    assert loss_fn.last_stats["nonzero_frac"] == pytest.approx((want_per_query > 0).mean())
    if gradient == "paper":  # the naive gradient is the paper's closed form
        loss.backward()
        np.testing.assert_allclose(xx.grad.double().numpy(), want_grad, rtol=rtol * 10,
                                   atol=1e-12 if dtype == torch.float64 else 1e-6)  # fmt: skip
    per_query = RankedListLoss(gradient=gradient, reduction="none")(
        x, labels, **{k: (v.to(dtype) if k == "ref_emb" else v) for k, v in kwargs.items()}
    )
    np.testing.assert_allclose(per_query.double().numpy(), want_per_query, rtol=rtol, atol=1e-12)
