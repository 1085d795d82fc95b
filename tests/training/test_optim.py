"""Parameter groups with learning-rate multipliers, and the schedules over iterations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rankedlist.training.config_schema import OptimConfig, ScheduleConfig
from rankedlist.training.optim import build_optimizer, build_scheduler


class TwoPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2, bias=False)

    def parameter_groups(self):
        return {"backbone": list(self.backbone.parameters()), "new": list(self.head.parameters())}


def _groups(opt):
    return {g["name"]: g for g in opt.param_groups}


def test_groups_multipliers_and_no_decay_on_1d_parameters():
    model, proxies = TwoPart(), nn.Linear(2, 3, bias=False)
    config = OptimConfig(
        name="sgd", lr=0.01, weight_decay=1e-4, lr_multiplier=10, loss_lr_multiplier=100
    )
    opt = build_optimizer(model, config, [proxies])
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    groups = _groups(opt)
    assert set(groups) == {"backbone", "backbone_no_decay", "new", "loss"}
    assert groups["backbone"]["params"] == [model.backbone[0].weight]
    assert len(groups["backbone_no_decay"]["params"]) == 3  # linear bias, BN weight and bias
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 1e-4
    assert groups["new"]["lr"] == pytest.approx(0.1)
    assert groups["loss"]["lr"] == pytest.approx(1.0)
    every = {id(p) for g in opt.param_groups for p in g["params"]}
    assert every == {id(p) for p in [*model.parameters(), *proxies.parameters()]}


def test_adamw_skips_frozen_parameters_and_plain_modules():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3))
    assert isinstance(opt, torch.optim.AdamW)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert all(p.requires_grad for p in params) and len(params) == 3


def _lrs(schedule: ScheduleConfig, iterations: int, lr: float = 1.0) -> list[float]:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = build_scheduler(opt, schedule, iterations)
    out = []
    for _ in range(iterations):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_multistep_over_iterations():
    lrs = _lrs(ScheduleConfig(name="multistep", milestones=[3, 5], gamma=0.5), 7)
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25, 0.25])


def test_cosine_with_linear_warmup():
    n, warm = 10, 4
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_iters=warm, warmup_factor=0.1), n)
    for i, lr in enumerate(lrs):
        expected = 0.5 * (1 + math.cos(math.pi * i / n))
        if i < warm:
            expected *= 0.1 + 0.9 * i / warm
        assert lr == pytest.approx(expected)


def test_constant_and_multipliers_survive_the_schedule():
    model = TwoPart()
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, lr_multiplier=10))
    sched = build_scheduler(opt, ScheduleConfig(name="multistep", milestones=[1], gamma=0.1), 5)
    opt.step()
    sched.step()
    groups = _groups(opt)
    assert groups["backbone"]["lr"] == pytest.approx(0.01)
    assert groups["new"]["lr"] == pytest.approx(0.1)
