"""Training as a function: repeated in-process calls, the validation hook, loss state in
checkpoints (the seams a tuner and a cross-batch memory need)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rankedlist.training import run as run_module
from rankedlist.training import train as train_module
from rankedlist.training.checkpoint import load_checkpoint

VALIDATED = ["data.val_fraction=0.25", "train.eval_every=2"]
pytestmark = pytest.mark.slow  # training runs end to end, one in a child process


def _numbers(result, run_dir):
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    losses = [r["loss"] for r in records if "loss" in r]
    return losses, result.test_metrics["fused"], result.validation


def test_two_calls_in_one_process_equal_two_processes_and_leave_the_caller_alone(
    tmp_path, tiny_run
):
    config = lambda d: tiny_run.config(tmp_path / d, "train.iterations=4", *VALIDATED)  # noqa: E731
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()

    first = train_module.main(config("a"))
    caller_draw = torch.rand(3)  # the caller's stream goes on as if no run had happened
    second = train_module.main(config("b"))
    assert torch.equal(caller_draw, expected_draw)
    assert torch.get_num_threads() == threads

    a, b = _numbers(first, tmp_path / "a"), _numbers(second, tmp_path / "b")
    assert a == b

    # The same config in a fresh process gives the same numbers.
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from _tiny_run import tiny_config\n"
        "from rankedlist.training.train import main\n"
        f"r = main(tiny_config(Path(sys.argv[1]), 'train.iterations=4', *{VALIDATED!r}))\n"
        "out = {'test': r.test_metrics['fused'], 'validation': r.validation}\n"
        "print('RESULT', json.dumps(out))\n"
    )
    tests = str(Path(__file__).resolve().parents[1])  # the folder of _tiny_run.py
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    fresh = json.loads(line.removeprefix("RESULT "))
    assert _numbers(second, tmp_path / "c")[0] == a[0]  # the same losses, step by step
    assert fresh["test"] == a[1] and fresh["validation"] == a[2]


def test_the_validation_hook_sees_each_validation_and_can_prune(tmp_path, tiny_run):
    seen = []

    def hook(iteration: int, metrics: dict) -> bool:
        seen.append((iteration, metrics["recall@1"]))
        return iteration >= 4  # prune at the second validation

    config = tiny_run.config(tmp_path, "train.iterations=8", *VALIDATED)
    result = train_module.main(config, on_validation=hook)
    assert result.status == "pruned" and result.iteration == 4
    assert [i for i, _ in seen] == [2, 4]
    assert [v["step"] for v in result.validation] == [2, 4]
    assert [v["recall@1"] for v in result.validation] == [r for _, r in seen]
    best = max(result.validation, key=lambda v: (v["recall@1"], -v["step"]))
    assert result.best == {
        "metric": "recall@1",
        "value": best["recall@1"],
        "iteration": best["step"],
    }
    assert result.test_metrics == {} and not (tmp_path / "metrics.json").exists()
    assert load_checkpoint(tmp_path)["iteration"] == 4  # resumable like any stop

    finished = train_module.main(config, resume=tmp_path)  # no hook: runs to the end
    assert finished.status == "completed" and [v["step"] for v in finished.validation] == [
        2,
        4,
        6,
        8,
    ]


class CountingMemory(nn.Module):
    """A loss with state, like a cross-batch memory: buffers that change at every call."""

    def __init__(self, inner: nn.Module, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("running", torch.zeros(dim))

    def forward(self, embeddings, labels):
        self.calls += 1
        self.running.mul_(0.5).add_(embeddings.detach().mean(0))
        return self.inner(embeddings, labels)


def test_a_stateful_loss_is_checkpointed_and_resumed_without_special_cases(
    tmp_path, monkeypatch, tiny_run
):
    real = run_module.build_losses

    def with_memory(config, model, num_classes, ctx):
        losses = real(config, model, num_classes, ctx)
        return nn.ModuleDict(
            {h: CountingMemory(fn, model.embedding_dim) for h, fn in losses.items()}
        )

    monkeypatch.setattr(run_module, "build_losses", with_memory)
    whole = tmp_path / "whole"
    train_module.main(tiny_run.config(whole, "train.iterations=6"), stop_after=6)
    parts = tmp_path / "parts"
    train_module.main(tiny_run.config(parts, "train.iterations=6"), stop_after=3)
    assert int(load_checkpoint(parts)["losses"]["high.calls"]) == 3
    train_module.main(tiny_run.config(parts, "train.iterations=6"), resume=parts, stop_after=6)

    a, b = load_checkpoint(whole)["losses"], load_checkpoint(parts)["losses"]
    assert int(a["high.calls"]) == int(b["high.calls"]) == 6
    assert torch.equal(a["high.running"], b["high.running"])  # the resumed state, bit for bit


def test_test_false_never_opens_the_test_split(tmp_path, monkeypatch, tiny_run):
    import rankedlist.data

    real, opened = rankedlist.data.get_dataset, []

    def recording(name, *args, split="train", **kwargs):
        opened.append(split)
        return real(name, *args, split=split, **kwargs)

    monkeypatch.setattr(rankedlist.data, "get_dataset", recording)
    result = train_module.main(
        tiny_run.config(tmp_path, "train.iterations=2", *VALIDATED), test=False
    )
    assert result.status == "completed" and result.test_metrics == {}
    assert sorted(set(opened)) == ["train", "val"]
    assert not (tmp_path / "metrics.json").exists()
