"""Distributed training on CPU with gloo: 2 real processes against 1 process on the same batch.

The 2-process part runs once per module (tests/training/_ddp_worker.py launched twice with
torchrun's environment variables); the tests compare what it saved with single-process
computations done here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _workers import load_worker

from rankedlist.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    broadcast_object,
    gather_embeddings,
    gather_eval,
    init_distributed,
    shard_indices,
    wrap_model,
)
from rankedlist.training.loss_factory import build_loss

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORLD = 2


W = load_worker(HERE / "_ddp_worker.py")  # the worker's cases, computed here too


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, gloo_ranks) -> list[dict]:
    """Run the worker on 2 ranks once; return what each rank saved."""
    out = tmp_path_factory.mktemp("ddp")
    gloo_ranks([sys.executable, str(HERE / "_ddp_worker.py"), str(out)], world=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single_process_case(name: str, params: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """The reference: one process, the whole global batch, rank 0's initial values."""
    model = W.make_model(seed=0)
    xb, yb = W.make_batch()
    torch.manual_seed(100)
    loss_fn = build_loss(name, params, num_classes=W.NUM_CLASSES, embedding_dim=W.EMB_DIM)
    value = loss_fn(model(xb), yb)
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads.update({f"loss.{n}": p.grad.clone() for n, p in loss_fn.named_parameters()})
    return float(value.detach()), grads


@pytest.mark.slow
def test_context_from_torchrun_environment(ranks):
    for r, res in enumerate(ranks):
        assert res["ctx"] == (r, WORLD, r, "cpu", r == 0)
        assert res["is_distributed"]


@pytest.mark.slow
@pytest.mark.parametrize("case", [c[0] for c in W.CASES])
def test_two_processes_match_one_process(ranks, case):
    """Mean of the ranks' losses == single-process loss; DDP-averaged grads == its grads."""
    _, name, params, _ = next(c for c in W.CASES if c[0] == case)
    ref_loss, ref_grads = _single_process_case(name, params)
    assert ref_loss > 0
    losses = [res["cases"][case]["loss"] for res in ranks]
    assert np.mean(losses) == pytest.approx(ref_loss, abs=1e-5, rel=1e-5)
    for res in ranks:
        grads = res["cases"][case]["grads"]
        assert set(grads) == set(ref_grads)
        for key, ref in ref_grads.items():
            assert ref.abs().max() > 0, f"{case}: reference gradient of {key} is zero"
            torch.testing.assert_close(grads[key], ref, atol=1e-5, rtol=1e-5, msg=f"{case} {key}")
    expected = "local_queries" if name == "rll" and "reduction" not in params else "replica"
    assert ranks[0]["cases"][case]["strategy"] == expected


@pytest.mark.slow
def test_rll_stats_reported_per_rank(ranks):
    for res in ranks:
        stats = res["cases"]["rll_paper"]["stats"]
        assert {"active_pos", "active_neg", "nonzero_frac"} <= set(stats)
        assert res["cases"]["triplet"]["stats"] == {}


@pytest.mark.slow
def test_shard_indices_partition(ranks):
    n = len(W.eval_data()[1])
    shards = [res["shard"] for res in ranks]
    assert np.array_equal(np.concatenate(shards), np.arange(n))  # contiguous, in rank order
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    for world in (1, 3, 4, 7):
        for n in (0, 1, 5, 12):
            parts = [
                shard_indices(n, DistributedContext(rank=r, world_size=world, is_distributed=True))
                for r in range(world)
            ]
            assert np.array_equal(np.concatenate(parts), np.arange(n)), (world, n)
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow
def test_gather_eval_round_trip(ranks):
    emb, lab = W.eval_data()
    for res in ranks:
        e_all, l_all, d_all = res["gather_eval"]
        torch.testing.assert_close(e_all, emb, atol=0, rtol=0)
        assert isinstance(l_all, np.ndarray) and np.array_equal(l_all, lab)
        torch.testing.assert_close(d_all["high"], emb * 2, atol=0, rtol=0)
        torch.testing.assert_close(d_all["low"], emb[:, :1], atol=0, rtol=0)


@pytest.mark.slow
def test_broadcast_and_mean(ranks):
    for res in ranks:
        assert res["broadcast"] == {"run": "from-rank-0"}
        assert res["mean_float"] == pytest.approx(1.5)
        torch.testing.assert_close(res["mean_tensor"], torch.tensor([0.5, 1.0]))


@pytest.mark.slow
def test_differentiable_gather_sums_gradients_on_owner(ranks):
    sizes = [2 + r for r in range(WORLD)]
    total = sum(sizes)
    expected_value = torch.cat([torch.full((s, 2), float(r + 1)) for r, s in enumerate(sizes)])
    # Rank r's loss is sum(g * weights * (r + 1)); the owner of rows [a, b) gets the sum over r.
    base = torch.arange(total * 2, dtype=torch.float32).reshape(total, 2)
    summed = base * sum(r + 1 for r in range(WORLD))
    start = 0
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["gather_value"], expected_value)
        torch.testing.assert_close(res["gather_plain"], expected_value)
        torch.testing.assert_close(res["gather_grad"], summed[start : start + sizes[r]])
        start += sizes[r]


def test_single_process_primitives_are_identities(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, ctx) is model
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_embeddings(x, ctx, differentiable=True) is x
    labels = np.arange(3)
    assert gather_eval(x, labels, ctx) == (x, labels)
    assert np.array_equal(shard_indices(5, ctx), np.arange(5))
    assert broadcast_object("a", ctx) == "a"
    assert all_reduce_mean(2.5, ctx) == 2.5


def test_init_distributed_errors(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed("cpu")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="unknown device"):
        init_distributed("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            init_distributed("cuda")


# --------------------------------------------------------------------------- the real trainer

# The tiny run (tiny_run.core) on 2 processes, one thread each, repeatable and quiet.
TORCHRUN = ["train.num_threads=1", "train.deterministic=true", "train.tensorboard=false",
            "train.iterations=6"]  # fmt: skip


def _torchrun_train(tiny_run, env: dict[str, str], cwd: Path, run_dir: Path, *args: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "rankedlist",
        "train",
        "--config",
        str(REPO / "configs" / "glyphs.yaml"),
        *tiny_run.core,
        *TORCHRUN,
        f"train.run_dir={run_dir}",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchrun failed (rc {proc.returncode}):\n{log[-4000:]}"
    return log


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.slow
def test_two_process_glyphs_run_reports_once_and_resumes(tmp_path, child_env, tiny_run):
    """torchrun x 2: stop at 3, resume to 6 (one report), same losses as an uninterrupted run."""
    parts, whole = tmp_path / "parts", tmp_path / "whole"
    log = _torchrun_train(tiny_run, child_env(), tmp_path, parts, "--stop-after", "3")
    assert f"x {WORLD} processes" in log
    assert (parts / "last.pt").is_file() and not (parts / "report.md").exists()

    log = _torchrun_train(tiny_run, child_env(), tmp_path, parts, "--resume")
    assert log.count("resumed from") == 1  # rank 0 alone speaks
    assert (parts / "report.md").is_file() and (parts / "report.md").stat().st_size > 0
    test = json.loads((parts / "metrics.json").read_text())["test"]
    assert 0.0 <= test["recall@1"] <= 1.0 and "map@r" in test
    state = torch.load(parts / "last.pt", map_location="cpu", weights_only=False)
    assert state["world_size"] == WORLD and state["iteration"] == 6 and len(state["rng"]) == WORLD

    _torchrun_train(tiny_run, child_env(), tmp_path, whole, "train.report=false")
    got, expected = _losses(parts), _losses(whole)
    assert [s for s, _ in got] == list(range(1, 7))  # each step logged once, by rank 0
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], abs=1e-6)
    # Nothing written outside the run folders (rank 1 writes nothing).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts", "whole"]
    assert len(list(tmp_path.rglob("report.md"))) == 1
