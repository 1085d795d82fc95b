"""Faults injected into training: nothing a user has is lost, and they read one `error:` line.

SIGKILL during checkpoint writes, a full disk (a small tmpfs, as root) and a read-only folder,
truncated / empty / garbage checkpoints, a divergent learning rate (one process and two),
SIGTERM during the final test evaluation, a forgotten --resume, a resume with another recipe.
Each test asserts what is on disk afterwards and what the user reads.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _full_disk import fill, small_tmpfs

from rankedlist.cli.main import main as cli
from rankedlist.training import run as run_module
from rankedlist.training import train as train_module
from rankedlist.training.checkpoint import EXPLODED, load_checkpoint
from rankedlist.training.health import NonFiniteLossError

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow  # faults injected into real training runs and processes


def error_line(capsys) -> str:
    """The one line the user reads on stderr (and nothing else there: no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- a finished run


def test_a_finished_run_is_never_overwritten_without_asking(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    assert tiny_run.train(run, "train.iterations=2") == 0
    before = snapshot(run)
    capsys.readouterr()

    assert tiny_run.train(run, "train.iterations=2") == 2
    line = error_line(capsys)
    assert str(run) in line and "already holds a run" in line
    assert "--resume" in line and "train.run_dir=" in line and "--overwrite" in line
    assert snapshot(run) == before  # not one byte changed

    (run / "notes.txt").write_text("mine")  # the user's own file in the folder
    assert tiny_run.train(run, "train.iterations=3", "--overwrite") == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # a fresh history
    assert load_checkpoint(run)["iteration"] == 3
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files were removed


# --------------------------------------------------------------------------- divergence


def test_divergence_names_the_iteration_and_the_last_good_checkpoint(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    assert tiny_run.train(run, "train.iterations=6", "--stop-after", "2") == 0
    good = load_checkpoint(run)
    capsys.readouterr()

    # lr = 1e30 as a deliberate change on resume: iteration 3 explodes the weights.
    code = tiny_run.train(
        run, "train.iterations=6", "train.checkpoint_every=1", "optim.lr=1e30",
        "--resume", "--allow-config-change",
    )  # fmt: skip
    assert code == 1
    line = error_line(capsys)
    assert "diverged at iteration 3" in line
    assert f"{run / 'last.pt'} (iteration 2)" in line
    assert "optim.lr" in line and "optim.clip_grad_norm" in line
    state = load_checkpoint(run)  # still the good one, bit for bit
    assert state["iteration"] == 2
    for name, tensor in state["model"].items():
        assert torch.equal(tensor, good["model"][name])
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all() and tensor.abs().max() <= EXPLODED


def test_divergence_from_the_start_writes_no_checkpoint(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    assert (
        tiny_run.train(run, "train.iterations=4", "train.checkpoint_every=1", "optim.lr=1e30") == 1
    )
    line = error_line(capsys)
    assert "diverged at iteration 1" in line and "no checkpoint had been written yet" in line
    assert not (run / "last.pt").exists() and not list(run.glob(".*.tmp"))


def test_the_checkpoint_guard_refuses_exploded_weights(tmp_path):
    config = train_module.config_from_dict(
        {"data": {"p": 8, "k": 2, "image_size": 32}, "model": {"embedding_dim": 16,
         "options": {"widths": [8, 16, 16, 32]}},
         "train": {"run_dir": str(tmp_path), "device": "cpu", "iterations": 2}}
    )  # fmt: skip
    from rankedlist.training.distributed import DistributedContext

    run = run_module.build_run(config, DistributedContext(), load_pretrained=False)
    run.save()
    before = (tmp_path / "last.pt").read_bytes()
    with torch.no_grad():
        next(run.model.parameters())[0] = 5e28  # what lr = 1e30 did to the weights
    with pytest.raises(NonFiniteLossError, match="max |x| = 5e"):
        run.save()
    assert (tmp_path / "last.pt").read_bytes() == before


_DIVERGENCE_WORKER = """
import sys, torch
sys.path.insert(0, {here!r})
from _ddp_worker import make_model, make_batch
from rankedlist.training.config import config_from_dict
from rankedlist.training.distributed import init_distributed, wrap_model, cleanup_distributed
from rankedlist.training.loss_factory import build_loss
from rankedlist.training.optim import build_optimizer
from rankedlist.training.health import NonFiniteLossError
from rankedlist.training.step import train_one_step

class Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make_model(seed=0)
    def forward(self, x):
        return {{"high": self.net(x)}}

ctx = init_distributed("cpu")
model = wrap_model(Heads(), ctx)
config = config_from_dict({{}})
losses = {{"high": build_loss("rll", {{}}, num_classes=4, embedding_dim=6, ctx=ctx)}}
optimizer = build_optimizer(model, config.optim)
scaler = torch.amp.GradScaler("cpu", enabled=False)
x, y = make_batch()
x, y = x[ctx.rank::2].clone(), y[ctx.rank::2]
if ctx.rank == 1:
    x[0, 0] = float("nan")  # only this rank's embeddings go bad
try:
    train_one_step(model, losses, x, y, optimizer, scaler, config, ctx)
except NonFiniteLossError as exc:
    print("STOPPED:", exc, flush=True)
    cleanup_distributed(ctx)
    sys.exit(3)
sys.exit(0)
"""


def test_a_non_finite_embedding_on_one_rank_stops_every_rank(tmp_path, gloo_ranks):
    """Two gloo processes: rank 1 alone has a NaN; both stop at the same step, none hangs."""
    script = tmp_path / "worker.py"
    script.write_text(_DIVERGENCE_WORKER.format(here=str(HERE)))
    logs = gloo_ranks([sys.executable, str(script)], world=2, expect=3, timeout=120)
    assert "embeddings are not finite on another process" in logs[0]
    assert "embeddings are not finite (head high)" in logs[1]


# --------------------------------------------------------------------------- resume


def test_resume_refuses_a_changed_recipe_and_records_allowed_changes(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    assert tiny_run.train(run, "train.iterations=4", "--stop-after", "2") == 0
    capsys.readouterr()
    before = snapshot(run)

    # Overrides after --resume, in any order (--resume used to swallow the first one).
    assert tiny_run.train(run, "train.iterations=4", "--resume", "data.p=16",
                          "train.log_every=2") == 2  # fmt: skip
    line = error_line(capsys)
    assert "data.p: 8 -> 16" in line and "train.log_every" not in line
    assert "unrecognized" not in line

    assert tiny_run.train(run, "train.iterations=4", "model.embedding_dim=64", "--resume") == 2
    line = error_line(capsys)  # no state_dict traceback
    assert "model.embedding_dim: 16 -> 64" in line
    assert tiny_run.train(run, "model.embedding_dim=64", "--resume", "--allow-config-change") == 2
    assert "model.embedding_dim" in error_line(capsys)  # the weights would not fit
    assert snapshot(run) == before  # refusals change nothing

    assert tiny_run.train(run, "train.iterations=5", "train.log_every=2", "--resume") == 0
    changes = [json.loads(x) for x in (run / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [
        {
            "time": changes[0]["time"],
            "iteration": 2,
            "resumed_from": str(run / "last.pt"),
            "changes": {
                "train.iterations": {"old": 4, "new": 5},
                "train.log_every": {"old": 1, "new": 2},
            },
        }
    ]
    assert load_checkpoint(run)["iteration"] == 5
    assert load_checkpoint(run)["config"]["train"]["iterations"] == 5


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_damaged_checkpoint_is_one_error_line(tmp_path, capsys, damage, command, tiny_run):
    run = tmp_path / "run"
    assert tiny_run.train(run, "train.iterations=2", "--stop-after", "1") == 0
    capsys.readouterr()
    path = run / "last.pt"
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(4096)}[damage]
    )
    if command == "train":
        code = cli(["train", "--resume", str(path)])
    else:
        code = cli(["evaluate", "--checkpoint", str(path)])
    assert code == 2
    line = error_line(capsys)
    assert str(path) in line and ("empty" in line or "cannot be read" in line)
    assert "best.pt" in line  # the way on


def test_orphan_temporaries_of_a_killed_write_are_removed_at_the_next_start(tmp_path, tiny_run):
    run = tmp_path / "run"
    assert tiny_run.train(run, "train.iterations=3", "--stop-after", "1") == 0
    orphan = run / ".last.pt.k3x9q2zz.tmp"
    orphan.write_bytes(b"half a checkpoint")
    keep = run / ".hidden_notes.tmp"  # not of atomic_write's making: left alone
    keep.write_text("mine")
    assert tiny_run.train(run, "--resume") == 0
    assert not orphan.exists() and keep.exists()


# --------------------------------------------------------------------------- signals


def test_sigterm_during_the_final_test_says_how_to_finish(tmp_path, capsys, monkeypatch, tiny_run):
    run = tmp_path / "run"
    real = train_module.test_and_report

    def interrupted(run_, log):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the evaluation
        time.sleep(5)
        raise AssertionError("the signal did not stop the evaluation")

    monkeypatch.setattr(train_module, "test_and_report", interrupted)
    assert tiny_run.train(run, "train.iterations=2") == 128 + signal.SIGTERM
    line = error_line(capsys)
    assert "during the final test evaluation" in line and "iteration 2" in line
    assert f"rankedlist train --resume {run / 'last.pt'}" in line
    assert load_checkpoint(run)["iteration"] == 2 and not (run / "metrics.json").exists()

    monkeypatch.setattr(train_module, "test_and_report", real)
    assert tiny_run.train(run, "--resume") == 0
    assert json.loads((run / "metrics.json").read_text())["test"]["recall@1"] > 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


_WRITER = """
import sys, torch
from rankedlist.training.checkpoint import save_checkpoint
path = sys.argv[1]
for i in range(1, 10**6):
    save_checkpoint({"model": {"w": torch.full((1_000_000,), float(i))}, "iteration": i}, path)
    print(i, flush=True)
"""


def test_sigkill_at_random_moments_never_corrupts_last_pt(tmp_path):
    path = tmp_path / "last.pt"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    rng = random.Random(0)
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one checkpoint is complete
        time.sleep(rng.uniform(0.0, 0.3))  # then kill it anywhere in a later write
        proc.kill()
        proc.wait()
        state = load_checkpoint(path)
        assert torch.equal(state["model"]["w"], torch.full((1_000_000,), float(state["iteration"])))
    from rankedlist.atomic_write import remove_orphan_temporaries

    remove_orphan_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "writer.py"]


# --------------------------------------------------------------------------- the disk


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, tiny_run):
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        run = disk / "run"
        assert tiny_run.train(run, "train.iterations=4", "--stop-after", "2") == 0
        capsys.readouterr()
        before = snapshot(run)
        size = len(before["last.pt"])
        fill(disk, leave=size // 2)  # room for logs, not for another checkpoint
        assert (
            tiny_run.train(run, "train.iterations=4", "train.checkpoint_every=1", "--resume") == 2
        )
        line = error_line(capsys)
        assert "no space left on device while writing" in line and str(run) in line
        assert "--resume" in line
        assert load_checkpoint(run)["iteration"] == 2  # intact
        assert (run / "last.pt").read_bytes() == before["last.pt"]
        assert not list(run.glob(".*.tmp"))  # no partial file left behind

        (disk / "filler").unlink()  # space again: the run goes on from its checkpoint
        assert tiny_run.train(run, "train.iterations=4", "--resume") == 0
        assert load_checkpoint(run)["iteration"] == 4


def test_a_read_only_run_folder_is_one_error_line(tmp_path, capsys, tiny_run):
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        run = disk / "run"
        assert tiny_run.train(run, "train.iterations=4", "--stop-after", "2") == 0
        capsys.readouterr()
        before = snapshot(run)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert tiny_run.train(run, "train.iterations=4", "--resume") == 2
        line = error_line(capsys)
        assert "read-only file system while writing" in line and str(run) in line
        assert snapshot(run) == before
