"""The default number of data-loader workers: none on a CPU device, per core on an accelerator."""

from __future__ import annotations

import os

import pytest
import torch

from rankedlist.training.loader_workers import resolve_num_workers


@pytest.fixture
def sixteen_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_an_explicit_count_is_kept_whatever_the_device(sixteen_cores):
    assert resolve_num_workers(3, "cpu") == 3
    assert resolve_num_workers(0, "cuda") == 0


def test_cpu_training_loads_in_the_main_process(sixteen_cores):
    assert resolve_num_workers(None, "cpu") == 0
    assert resolve_num_workers(None, torch.device("cpu")) == 0


def test_accelerators_get_one_worker_per_core_but_one_at_most_eight(sixteen_cores, monkeypatch):
    assert resolve_num_workers(None, "cuda:1") == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert resolve_num_workers(None, torch.device("cuda")) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert resolve_num_workers(None, "cuda") == 0


def test_processes_of_one_torchrun_share_the_cores(sixteen_cores, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_num_workers(None, "cuda") == 3  # 16 cores / 4 processes, less the loop
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert resolve_num_workers(None, "cuda") == 0
