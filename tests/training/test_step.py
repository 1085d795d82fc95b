"""One training step: per-head losses summed, gradient clipping, non-finite detection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankedlist.training.config import config_from_dict
from rankedlist.training.distributed import DistributedContext
from rankedlist.training.health import NonFiniteLossError
from rankedlist.training.optim import build_optimizer
from rankedlist.training.step import train_one_step


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.low, self.high = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return {"low": self.low(x), "high": self.high(x)}


class SquaredNorm(nn.Module):
    """A loss with stats, like RLL's ``last_stats``."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale, self.last_stats = scale, {}

    def forward(self, embeddings, labels):
        self.last_stats = {"active_pos": self.scale}
        return self.scale * embeddings.pow(2).sum()


def _setup(clip=None):
    torch.manual_seed(0)
    model = TwoHeads()
    config = config_from_dict(
        {"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                   "clip_grad_norm": clip}}
    )  # fmt: skip
    losses = {"low": SquaredNorm(1.0), "high": SquaredNorm(3.0)}
    optimizer = build_optimizer(model, config.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, losses, optimizer, scaler, config


def test_head_losses_are_summed_and_logged():
    model, losses, optimizer, scaler, config = _setup()
    x, y = torch.randn(4, 3), torch.arange(4)
    with torch.no_grad():
        out = model(x)
        expected = {"low": out["low"].pow(2).sum().item(), "high": 3 * out["high"].pow(2).sum()}
    values, stop = train_one_step(
        model, losses, x, y, optimizer, scaler, config, DistributedContext()
    )
    assert not stop
    assert values["loss/low"] == pytest.approx(expected["low"], rel=1e-6)
    assert values["loss/high"] == pytest.approx(float(expected["high"]), rel=1e-6)
    assert values["loss"] == pytest.approx(values["loss/low"] + values["loss/high"], rel=1e-6)
    assert values["active_pos"] == pytest.approx(2.0)  # the mean over heads
    assert values["active_pos/high"] == pytest.approx(3.0)


def test_gradient_clipping_bounds_the_update():
    model, losses, optimizer, scaler, config = _setup(clip=0.01)
    x, y = torch.randn(4, 3), torch.arange(4)
    # The unclipped gradient norm, computed independently with autograd.
    out = model(x)
    total = out["low"].pow(2).sum() + 3 * out["high"].pow(2).sum()
    grads = torch.autograd.grad(total, list(model.parameters()))
    raw_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()
    before = [p.detach().clone() for p in model.parameters()]

    values, _ = train_one_step(model, losses, x, y, optimizer, scaler, config, DistributedContext())
    assert values["grad_norm"] == pytest.approx(raw_norm, rel=1e-5)
    step = torch.sqrt(
        sum((p - b).pow(2).sum() for p, b in zip(model.parameters(), before, strict=True))
    )
    assert raw_norm > 0.01
    assert step.item() == pytest.approx(0.1 * 0.01, rel=1e-4)  # lr x the clipped norm


def test_non_finite_loss_raises_before_the_weights_change():
    model, losses, optimizer, scaler, config = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3)
    x[0, 0] = float("nan")
    # The loss never sees the NaN (its input check would raise a ValueError that names no
    # iteration, and under DDP before the step's collective).
    with pytest.raises(NonFiniteLossError, match="embeddings are not finite .head low, high."):
        train_one_step(model, losses, x, torch.arange(4), optimizer, scaler, config,
                       DistributedContext())  # fmt: skip
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


class Rigged(nn.Module):
    """A loss that is finite in value but whose gradient (or value) is not."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, embeddings, labels):
        if self.kind == "inf loss":
            return embeddings.sum() * 0 + float("inf")
        # d/dx sqrt(0 * x) = 0 * inf = nan, while the value is 0.
        return (embeddings * 0).sqrt().sum()


@pytest.mark.parametrize(
    ("kind", "match"),
    [("inf loss", "the loss is not finite"), ("nan gradient", "the gradients are not finite")],
)
def test_non_finite_loss_or_gradient_stops_before_the_weights_change(kind, match):
    model, _, optimizer, scaler, config = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    losses = {"low": Rigged(kind), "high": Rigged(kind)}
    with pytest.raises(NonFiniteLossError, match=match):
        train_one_step(model, losses, torch.randn(4, 3), torch.arange(4), optimizer, scaler,
                       config, DistributedContext())  # fmt: skip
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_an_update_that_explodes_the_weights_stops():
    model, losses, optimizer, scaler, config = _setup()
    for group in optimizer.param_groups:
        group["lr"] = 1e30  # finite loss and gradients, weights of about 1e30 after the step
    with pytest.raises(NonFiniteLossError, match=r"exploded the parameters \(max \|w\| = "):
        train_one_step(model, losses, torch.randn(4, 3), torch.arange(4), optimizer, scaler,
                       config, DistributedContext())  # fmt: skip


def test_a_sample_repeated_in_the_batch_is_not_its_own_positive():
    """The trainer hands the batch's dataset indices to RLL (and the pair-based baselines): two
    copies of one image (the P x K sampler repeats a small class's images) are left out of each
    other's ranked lists. Reference: the naive loop over the step's own embeddings."""
    from rankedlist.training.loss_factory import build_loss

    torch.manual_seed(1)
    model = nn.Linear(3, 4).double()
    config = config_from_dict({"optim": {"name": "sgd", "lr": 0.1}})
    x = torch.randn(6, 3, dtype=torch.float64)
    x[5] = -x[2]  # the second copy of sample 12, augmented far from the first
    y, ids = torch.tensor([0, 0, 1, 1, 2, 1]), torch.tensor([10, 11, 12, 13, 14, 12])
    with torch.no_grad():
        f = torch.nn.functional.normalize(model(x), dim=1)
    want = 0.0
    for i in range(6):  # L_P + L_N of the paper (alpha 1.2, m 0.4, Tn 10, Tp 0), mean over queries
        pos, neg = [], []
        for j in range(6):
            if ids[j] == ids[i]:
                continue
            d = float((f[i] - f[j]).norm())
            if y[j] == y[i] and d > 0.8:
                pos.append(d - 0.8)
            elif y[j] != y[i] and d < 1.2:
                neg.append(d)
        want += sum(pos) / len(pos) if pos else 0.0
        if neg:
            w = [torch.exp(torch.tensor(10.0 * (1.2 - d))).item() for d in neg]
            want += sum(wj * (1.2 - d) for wj, d in zip(w, neg, strict=True)) / sum(w)
    losses = {"high": build_loss("rll", {}, num_classes=3, embedding_dim=4)}

    def one_step(indices):
        m = nn.Linear(3, 4).double()
        m.load_state_dict(model.state_dict())
        wrapped = _Single(m)
        opt = build_optimizer(wrapped, config.optim)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        ctx = DistributedContext()
        return train_one_step(wrapped, losses, x, y, opt, scaler, config, ctx, indices=indices)[0]

    assert one_step(ids)["loss"] == pytest.approx(want / 6, rel=1e-6)  # the step runs in float32
    assert abs(one_step(None)["loss"] - want / 6) > 1e-3  # the copies count without indices


class _Single(nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, x):
        return {"high": self.fc(x)}
