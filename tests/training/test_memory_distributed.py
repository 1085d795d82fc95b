"""Cross-batch memory under DDP: 2 gloo processes against 1 process on the same global batches.

The memory holds the gathered global batch, enqueued in the same order on every rank, so after
every step the ranks' memories are identical, and the losses and DDP-averaged gradients equal the
single-process ones (same global batches, same memory) to 1e-5, step after step, while the memory
fills, wraps around and holds older copies of the batch's samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _workers import load_worker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORLD = 2
pytestmark = pytest.mark.slow  # every test reads the 2-process job


W = load_worker(HERE / "_ddp_memory_worker.py")  # the worker's cases, computed here too


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, gloo_ranks) -> list[dict]:
    """Run the worker on 2 ranks once; return what each rank saved."""
    out = tmp_path_factory.mktemp("ddp_memory")
    gloo_ranks([sys.executable, str(HERE / "_ddp_memory_worker.py"), str(out)], world=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case", [c[0] for c in W.CASES])
def test_two_processes_match_one_process_step_after_step(ranks, case):
    _, name, params, _ = next(c for c in W.CASES if c[0] == case)
    torch.manual_seed(0)
    ref = W.run_case(name, params, None, W.make_model(seed=0), slice(0, W.P * W.K))
    # The memory fills from the second step and wraps around at the fourth.
    assert ref["fills"] == [0, 16, 32, 40, 40]
    for step in range(W.STEPS):
        mean = np.mean([res[case]["losses"][step] for res in ranks])
        assert mean == pytest.approx(ref["losses"][step], abs=1e-5, rel=1e-5), f"step {step}"
        for res in ranks:
            assert res[case]["fills"] == ref["fills"]
            for key, want in ref["grads"][step].items():
                assert want.abs().max() > 0, f"{case}: reference gradient of {key} is zero"
                torch.testing.assert_close(
                    res[case]["grads"][step][key], want, atol=1e-5, rtol=1e-5,
                    msg=f"{case} step {step} {key}",
                )  # fmt: skip
    for key, want in ref["memory"].items():
        torch.testing.assert_close(ranks[0][case]["memory"][key], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c[0] for c in W.CASES])
def test_the_ranks_memories_are_identical(ranks, case):
    first, second = (res[case]["memory"] for res in ranks)
    assert set(first) == set(second) and first
    for key in first:
        if isinstance(first[key], torch.Tensor):
            assert torch.equal(first[key], second[key]), f"{case}: {key} differs between ranks"
        else:
            assert first[key] == second[key], f"{case}: {key} differs between ranks"
