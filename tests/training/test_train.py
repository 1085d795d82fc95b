"""The training loop on tiny glyph runs: resume equivalence, signals, non-finite loss, best.pt.

Every run is a few iterations of a narrow GlyphNet on 32 px glyphs with ``num_workers=0`` and
deterministic algorithms, so the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import yaml

from rankedlist.training import run as run_module
from rankedlist.training import train as train_module
from rankedlist.training.checkpoint import load_checkpoint, save_checkpoint
from rankedlist.training.health import NonFiniteLossError

pytestmark = pytest.mark.slow  # tiny training runs end to end (resume, signals, bf16)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_run):
    # 12 iterations cross epoch boundaries; the stop at 7 falls in the middle of an epoch.
    whole = train_module.main(tiny_run.config(tmp_path / "whole", "train.iterations=12"))
    assert whole.status == "completed"

    parts = tiny_run.config(tmp_path / "parts", "train.iterations=12", "train.checkpoint_every=4")
    first = train_module.main(parts, stop_after=7)
    assert first.status == "stopped" and first.iteration == 7
    state = load_checkpoint(tmp_path / "parts" / "last.pt")
    assert state["iteration"] == 7 and state["batch_in_epoch"] > 0  # mid-epoch
    second = train_module.main(parts, resume=tmp_path / "parts")
    assert second.status == "completed" and second.iteration == 12

    expected, got = tiny_run.records(tmp_path / "whole"), tiny_run.records(tmp_path / "parts")
    assert [r["step"] for r in got] == list(range(1, 13))  # logged once each, none twice
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in expected], abs=1e-6)
    assert second.test_metrics["fused"]["recall@1"] == pytest.approx(
        whole.test_metrics["fused"]["recall@1"], abs=1e-6
    )

    # The resolved config travels in every checkpoint and in the run folder.
    saved = load_checkpoint(tmp_path / "parts" / "last.pt")
    assert saved["config"] == parts.to_dict()
    assert yaml.safe_load((tmp_path / "parts" / "config.yaml").read_text()) == parts.to_dict()

    # Resuming needs the world size that wrote the checkpoint.
    saved["world_size"] = 2
    save_checkpoint(saved, tmp_path / "parts" / "last.pt")
    with pytest.raises(ValueError, match="same world size"):
        train_module.main(parts, resume=tmp_path / "parts" / "last.pt")


def test_signal_saves_a_checkpoint_and_stops(tmp_path, monkeypatch, tiny_run):
    real_step = train_module.train_one_step
    calls = {"n": 0}

    def step_then_signal(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the trainer's handler
        return out

    monkeypatch.setattr(train_module, "train_one_step", step_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    result = train_module.main(tiny_run.config(tmp_path, "train.iterations=50"))
    assert result.status == "interrupted" and result.signal == signal.SIGTERM
    assert result.iteration == 4  # the step in flight finishes, then every rank stops together
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, tiny_run):
    real_build = run_module.build_losses

    class NanAtFifthCall(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, embeddings, labels):
            self.calls += 1
            loss = self.inner(embeddings, labels)
            return loss * float("nan") if self.calls == 5 else loss

    def build(*args, **kwargs):
        losses = real_build(*args, **kwargs)
        return torch.nn.ModuleDict({k: NanAtFifthCall(v) for k, v in losses.items()})

    monkeypatch.setattr(run_module, "build_losses", build)
    config = tiny_run.config(tmp_path, "train.iterations=10", "train.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError, match="iteration 5") as info:
        train_module.main(config)
    assert "last.pt (iteration 4)" in str(info.value)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_validation_selects_best_checkpoint_and_test_is_evaluated_once(tmp_path, tiny_run):
    config = tiny_run.config(
        tmp_path, "train.iterations=6", "train.eval_every=3", "data.val_fraction=0.25"
    )
    result = train_module.main(config)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if any(k.startswith("val/") for k in r)]
    test = [r for r in records if any(k.startswith("test/") for k in r)]
    assert [r["step"] for r in val] == [3, 6]
    assert len(test) == 1 and test[0]["step"] == 6
    best = load_checkpoint(tmp_path / "best.pt")
    scores = {r["step"]: r["val/recall@1"] for r in val}
    assert best["iteration"] == max(scores, key=lambda s: (scores[s], -s))
    assert "optimizer" not in best  # weights only
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["recall@1"] == pytest.approx(
        result.test_metrics["fused"]["recall@1"]
    )


def test_bf16_autocast_on_cpu_tracks_the_float32_run(tmp_path, tiny_run):
    """bf16 autocast really runs (the losses differ from float32's in their low bits) and stays
    within bf16's resolution of the float32 run, step by step and in the test metrics."""
    bf16 = train_module.main(
        tiny_run.config(tmp_path / "bf16", "train.iterations=3", "train.amp=bf16")
    )
    fp32 = train_module.main(tiny_run.config(tmp_path / "fp32", "train.iterations=3"))
    assert bf16.status == fp32.status == "completed"
    low = [r["loss"] for r in tiny_run.records(tmp_path / "bf16")]
    full = [r["loss"] for r in tiny_run.records(tmp_path / "fp32")]
    assert len(low) == len(full) == 3
    assert low != full  # autocast was active: bf16 products round differently
    # Same weights and batch at step 1: the loss agrees to bf16's ~3 significant digits.
    assert low[0] == pytest.approx(full[0], rel=2e-2)
    assert low == pytest.approx(full, rel=5e-2)
    got, want = bf16.test_metrics["fused"], fp32.test_metrics["fused"]
    assert got["recall@1"] == pytest.approx(want["recall@1"], abs=0.03)
    assert got["map@r"] == pytest.approx(want["map@r"], abs=0.03)


def test_multi_level_training_with_the_real_rll_lowers_every_heads_loss(tmp_path, tiny_run):
    """RLL-(L,M,H): one Ranked List Loss per head, summed; each head's own loss falls."""
    config = tiny_run.config(
        tmp_path, "train.iterations=40", "model.multi_level=true", "optim.lr=0.01"
    )
    result = train_module.main(config, stop_after=30)
    assert result.status == "stopped"
    records = tiny_run.records(tmp_path)
    assert len(records) == 30
    for head in ("low", "mid", "high"):
        losses = [r[f"loss/{head}"] for r in records]
        first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
        assert last < 0.9 * first, (head, first, last)
    for r in records:  # the logged loss is the sum of the heads' losses
        parts = r["loss/low"] + r["loss/mid"] + r["loss/high"]
        assert r["loss"] == pytest.approx(parts, rel=1e-6)
    from rankedlist.losses import RankedListLoss
    from rankedlist.training.distributed import DistributedContext

    model = run_module.build_model(config)
    built = run_module.build_losses(config, model, 10, DistributedContext())
    assert sorted(built) == ["high", "low", "mid"]
    assert all(type(fn.loss) is RankedListLoss for fn in built.values())  # the real loss


def test_workers_give_the_same_run_and_resume_exactly(tmp_path, tiny_run):
    """Two loader workers (batches augmented in the workers) give the losses of none, and a run
    stopped and resumed with workers equals an uninterrupted one."""
    common = ("train.iterations=10", "train.checkpoint_every=3")
    none = train_module.main(tiny_run.config(tmp_path / "w0", *common), stop_after=8)
    two = tiny_run.config(tmp_path / "w2", *common, "data.num_workers=2")
    train_module.main(two, stop_after=5)
    train_module.main(two, resume=tmp_path / "w2", stop_after=8)
    assert none.status == "stopped"
    losses = [r["loss"] for r in tiny_run.records(tmp_path / "w0")]
    assert len(losses) == 8
    assert [r["loss"] for r in tiny_run.records(tmp_path / "w2")] == losses
