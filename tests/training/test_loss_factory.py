"""The loss factory: every name builds, params are validated, wiring matches naive references."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rankedlist.training.distributed import DistributedContext
from rankedlist.training.loss_factory import LOSS_NAMES, build_loss, has_parameters, valid_params

NUM_CLASSES, DIM = 6, 8


def _batch(seed: int = 0, p: int = 4, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p * k, DIM, generator=g, dtype=torch.float64)
    return x, torch.arange(p).repeat_interleave(k)


def _naive_dist(x: torch.Tensor) -> np.ndarray:
    f = x.detach().numpy()
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    n = len(f)
    return np.array([[np.linalg.norm(f[i] - f[j]) for j in range(n)] for i in range(n)])


def test_names():
    assert set(LOSS_NAMES) == {
        "rll",
        "contrastive",
        "triplet",
        "multi_similarity",
        "npair",
        "lifted",
        "proxy_anchor",
    }


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_is_finite_and_backpropagates(name):
    x, y = _batch()
    x = x.float().requires_grad_()
    loss_fn = build_loss(name, {}, num_classes=NUM_CLASSES, embedding_dim=DIM)
    value = loss_fn(x, y)
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert isinstance(loss_fn.last_stats, dict)
    assert (loss_fn.last_stats != {}) == (name == "rll")
    assert has_parameters(loss_fn) == (name == "proxy_anchor")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_loss("arcface", {}, num_classes=NUM_CLASSES, embedding_dim=DIM)
    for name in LOSS_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rll", ["margin", "alpha", "Tn", "Tp", "lam", "gradient", "reduction"]),
        ("triplet", ["margin", "miner_margin", "miner_type_of_triplets"]),
        ("multi_similarity", ["alpha", "beta", "base", "miner_epsilon"]),
        ("proxy_anchor", ["margin", "alpha"]),
    ],
)
def test_unknown_param_lists_valid_params(name, expected):
    assert set(expected) <= set(valid_params(name))
    with pytest.raises(ValueError, match="unknown parameter") as err:
        build_loss(name, {"temperature": 0.1}, num_classes=NUM_CLASSES, embedding_dim=DIM)
    for key in expected:
        assert key in str(err.value)
    assert "num_classes" not in valid_params("proxy_anchor")  # the factory fills it in


def test_bad_values_and_types():
    kw = {"num_classes": NUM_CLASSES, "embedding_dim": DIM}
    with pytest.raises(ValueError, match="reduction='none'"):
        build_loss("rll", {"reduction": "none"}, **kw)
    with pytest.raises(ValueError, match="rll"):
        build_loss("rll", {"gradient": "sideways"}, **kw)
    with pytest.raises(ValueError, match="triplet"):
        build_loss("triplet", {"miner_type_of_triplets": "nonsense"}, **kw)
    with pytest.raises(TypeError, match="mapping"):
        build_loss("contrastive", [("pos_margin", 0.1)], **kw)
    with pytest.raises(ValueError, match="num_classes"):
        build_loss("proxy_anchor", {}, num_classes=0, embedding_dim=DIM)
    loss_fn = build_loss("contrastive", None, **kw)  # None means defaults
    with pytest.raises(ValueError, match="labels of shape"):
        loss_fn(torch.randn(4, DIM), torch.zeros(3, dtype=torch.long))


def test_proxy_anchor_exposes_trainable_proxies():
    loss_fn = build_loss(
        "proxy_anchor", {"margin": 0.1}, num_classes=NUM_CLASSES, embedding_dim=DIM
    )
    params = list(loss_fn.parameters())
    assert len(params) == 1 and params[0].shape == (NUM_CLASSES, DIM) and params[0].requires_grad
    before = params[0].detach().clone()
    opt = torch.optim.SGD(loss_fn.parameters(), lr=1.0)
    x, y = _batch()
    loss_fn(x.float(), y).backward()
    opt.step()
    assert not torch.equal(before, params[0].detach())
    with pytest.raises(ValueError, match="num_classes"):
        loss_fn(x.float(), y + NUM_CLASSES)


def test_rll_matches_the_spec_oracle():
    # The hand-worked case T1 (tests/losses/test_oracles.py): batch loss 0.907714 at the paper's
    # defaults.
    pts = [(0, 2.0), (60, 0.5), (30, 3.0), (100, 1.0)]
    x = torch.tensor(
        [[r * math.cos(math.radians(a)), r * math.sin(math.radians(a))] for a, r in pts],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 0, 1, 1])
    loss_fn = build_loss("rll", {}, num_classes=2, embedding_dim=2)
    assert loss_fn(x, y).item() == pytest.approx(0.907714, abs=1e-6)
    loss_fn = build_loss("rll", {"margin": 0.2, "alpha": 1.1}, num_classes=2, embedding_dim=2)
    assert loss_fn(x, y).item() == pytest.approx(0.707714, abs=1e-6)


def test_triplet_is_semihard_with_the_loss_margin():
    """Naive reference: mean of (d_ap - d_an + m) over triplets with d_ap < d_an < d_ap + m."""
    x, y = _batch(seed=3)
    margin = 0.3
    d = _naive_dist(x)
    terms = []
    n = len(y)
    for a in range(n):
        for p in range(n):
            if p == a or y[p] != y[a]:
                continue
            for q in range(n):
                if y[q] == y[a]:
                    continue
                if d[a, p] < d[a, q] < d[a, p] + margin:
                    terms.append(d[a, p] - d[a, q] + margin)
    assert len(terms) > 0
    loss_fn = build_loss("triplet", {"margin": margin}, num_classes=4, embedding_dim=DIM)
    assert loss_fn(x, y).item() == pytest.approx(np.mean(terms), rel=1e-6)
    # An explicit miner margin overrides the default tie to the loss margin.
    wide = build_loss(
        "triplet", {"margin": margin, "miner_margin": 2.5}, num_classes=4, embedding_dim=DIM
    )
    assert wide.miner.margin == 2.5 and wide.loss.margin == margin


def test_contrastive_matches_naive_pairs():
    """Naive reference: mean non-zero hinge over positive pairs + same over negative pairs."""
    x, y = _batch(seed=5)
    pos_m, neg_m = 0.2, 0.9
    d = _naive_dist(x)
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            if y[i] == y[j]:
                pos.append(max(d[i, j] - pos_m, 0.0))
            else:
                neg.append(max(neg_m - d[i, j], 0.0))

    def nonzero_mean(v):
        v = [t for t in v if t > 0]
        return float(np.mean(v)) if v else 0.0

    loss_fn = build_loss(
        "contrastive", {"pos_margin": pos_m, "neg_margin": neg_m}, num_classes=4, embedding_dim=DIM
    )
    assert loss_fn(x, y).item() == pytest.approx(nonzero_mean(pos) + nonzero_mean(neg), rel=1e-6)


def test_single_process_context_computes_the_plain_loss():
    ctx = DistributedContext()
    x, y = _batch()
    a = build_loss("rll", {"Tn": 5.0}, num_classes=4, embedding_dim=DIM, ctx=ctx)
    b = build_loss("rll", {"Tn": 5.0}, num_classes=4, embedding_dim=DIM)
    assert a.strategy == "single"
    assert a(x, y).item() == b(x, y).item()


def _batch_with_copies(
    seed: int, sign: float = -1.0, noise: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A P x K batch in which the sampler repeated two samples of small classes (rows 1 and 3,
    9 and 10), each copy augmented apart (by default far from the other copy)."""
    x, y = _batch(seed=seed)
    ids = torch.arange(len(y)) * 5
    g = torch.Generator().manual_seed(seed + 100)
    for row, first in ((3, 1), (10, 9)):
        x[row] = sign * x[first] + noise * torch.randn(DIM, generator=g, dtype=torch.float64)
        ids[row] = ids[first]
    return x, y, ids


def _unit_dist(x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return (x[i] / x[i].norm() - x[j] / x[j].norm()).norm()


def test_contrastive_given_indices_skips_pairs_of_one_sample():
    """Naive reference: the contrastive loop without the pairs of equal dataset index; loss and
    gradient."""
    x, y, ids = _batch_with_copies(seed=7)
    pos_m, neg_m = 0.2, 0.9
    xr = x.clone().requires_grad_(True)
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if ids[i] == ids[j]:
                continue  # the row itself, or the other copy of its sample
            d = _unit_dist(xr, i, j)
            (pos if y[i] == y[j] else neg).append(
                torch.relu(d - pos_m) if y[i] == y[j] else torch.relu(neg_m - d)
            )
    live_pos = [t for t in pos if float(t.detach()) > 0]
    live_neg = [t for t in neg if float(t.detach()) > 0]
    want = sum(live_pos) / len(live_pos) + sum(live_neg) / len(live_neg)
    want.backward()
    loss_fn = build_loss(
        "contrastive", {"pos_margin": pos_m, "neg_margin": neg_m}, num_classes=4, embedding_dim=DIM
    )
    assert loss_fn.takes_indices
    xo = x.clone().requires_grad_(True)
    got = loss_fn(xo, y, ids)
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-12)
    assert abs(loss_fn(x, y).item() - want.item()) > 1e-3  # the copies count without indices
    assert loss_fn(x, y, torch.arange(len(y))).item() == loss_fn(x, y).item()  # no copies


def test_triplet_given_indices_skips_anchor_positive_pairs_of_one_sample():
    """Naive reference: semi-hard triplets whose anchor and positive are different samples."""
    x, y, ids = _batch_with_copies(seed=8, sign=1.0, noise=1.0)  # copies within the margins
    margin = 0.3
    xr = x.clone().requires_grad_(True)
    terms = []
    n = len(y)
    for a in range(n):
        for p in range(n):
            if ids[p] == ids[a] or y[p] != y[a]:
                continue
            for q in range(n):
                if y[q] == y[a]:
                    continue
                d_ap, d_aq = _unit_dist(xr, a, p), _unit_dist(xr, a, q)
                if d_ap.item() < d_aq.item() < d_ap.item() + margin:
                    terms.append(d_ap - d_aq + margin)
    assert len(terms) > 0
    want = sum(terms) / len(terms)
    want.backward()
    loss_fn = build_loss("triplet", {"margin": margin}, num_classes=4, embedding_dim=DIM)
    xo = x.clone().requires_grad_(True)
    got = loss_fn(xo, y, ids)
    got.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-12)
    assert abs(loss_fn(x, y).item() - want.item()) > 1e-3  # copies mined without indices


def test_which_losses_take_the_samples_indices():
    for name in LOSS_NAMES:
        loss_fn = build_loss(name, {}, num_classes=4, embedding_dim=DIM)
        assert loss_fn.takes_indices == (name != "proxy_anchor"), name  # proxies pair no samples
        assert not loss_fn.needs_indices
        x, y = _batch(seed=9)
        assert loss_fn(x, y, torch.arange(len(y))).isfinite()


def test_a_recipe_and_the_factory_refuse_a_memory_by_the_same_records(monkeypatch):
    """One list (the records' takes_memory) and one check for both paths: a record that stops
    taking a memory is refused by the recipe check and by build_loss alike."""
    from rankedlist.training import loss_factory
    from rankedlist.training.config import config_from_dict

    config_from_dict({"loss": {"name": "contrastive", "memory_size": 4096}})  # takes one today
    record = loss_factory.LOSSES["contrastive"]
    monkeypatch.setitem(
        loss_factory.LOSSES, "contrastive", dataclasses.replace(record, takes_memory=False)
    )
    with pytest.raises(ValueError, match="'contrastive' cannot rank against a cross-batch"):
        config_from_dict({"loss": {"name": "contrastive", "memory_size": 4096}})
    with pytest.raises(ValueError, match="'contrastive' cannot rank against a cross-batch"):
        loss_factory.build_loss("contrastive", {}, num_classes=4, embedding_dim=8, memory_size=64)
