"""The run folder where features meet: one writer (real processes), nothing deleted before
everything is checked, resumes of moved, copied and redirected runs to the end, a failed first
start, and ``--overwrite`` removing exactly the run's own files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rankedlist.cli.main import main as cli
from rankedlist.folder_lock import lock_path
from rankedlist.training import train as train_module
from rankedlist.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # `rankedlist train` runs end to end, some in real processes


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- real processes


@pytest.fixture
def start_train(child_env, tiny_run):
    """``start_train(run_dir, *args)``: ``rankedlist train`` of the tiny run in a child process."""

    def start(run_dir: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "rankedlist", *tiny_run.argv(run_dir, *args)],
            env=child_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


def wait_for_lock(proc: subprocess.Popen, run_dir: Path, timeout: float = 120) -> None:
    """Until ``proc`` holds the folder's lock (its holder line names its pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = lock_path(run_dir, inside=True)
        if path.exists() and f"pid {proc.pid}:" in path.read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first run never took the folder's lock")


def test_a_second_writer_is_refused_while_the_first_trains(tmp_path, start_train):
    run = tmp_path / "run"
    first = start_train(run, "train.iterations=40", "train.checkpoint_every=10")
    try:
        wait_for_lock(first, run)
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = start_train(run, "train.iterations=40", "train.seed=7", *extra)
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, (extra, out, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), err
            assert str(run) in lines[0] and f"pid {first.pid}" in lines[0], lines[0]
            assert "in use by another process" in lines[0]
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
    finally:
        first.kill()
        first.wait()
    # One run's folder, not a mix: its config, checkpoint and history agree, every step once.
    saved = load_checkpoint(run)
    assert saved["iteration"] == 40 and saved["config"]["train"]["seed"] == 0
    assert "seed: 0" in (run / "config.yaml").read_text()
    assert steps(run) == list(range(1, 41))


def test_two_writers_started_together_leave_one_run(tmp_path, start_train):
    run = tmp_path / "run"
    procs = [start_train(run, "train.iterations=20", f"train.seed={seed}") for seed in (1, 2)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    loser_err = next(err for p, _, err in results if p.returncode == 2).strip().splitlines()
    assert len(loser_err) == 1 and str(run) in loser_err[0], loser_err
    seed = 1 if winner is procs[0] else 2
    assert load_checkpoint(run)["config"]["train"]["seed"] == seed
    assert f"seed: {seed}" in (run / "config.yaml").read_text()
    assert steps(run) == list(range(1, 21))


def test_a_killed_writer_leaves_no_stale_lock_and_no_run_to_protect(
    tmp_path, start_train, tiny_run
):
    run = tmp_path / "run"
    first = start_train(run, "train.iterations=400", "train.checkpoint_every=1000")
    wait_for_lock(first, run)
    first.kill()  # SIGKILL: no handler runs, the kernel drops the lock
    first.wait()
    assert not (run / "last.pt").exists()
    # No checkpoint was saved, so this is no run to protect: a plain start takes the folder.
    assert tiny_run.train(run, "train.iterations=2") == 0
    assert steps(run) == [1, 2] and load_checkpoint(run)["iteration"] == 2


# --------------------------------------------------------------------------- validate first


def test_a_refused_resume_or_a_bad_override_deletes_nothing(tmp_path, capsys, tiny_run):
    a, b = tmp_path / "a", tmp_path / "b"
    assert tiny_run.train(a, "train.iterations=2") == 0
    assert tiny_run.train(b, "train.iterations=2", "train.seed=3") == 0
    before_a, before_b = snapshot(a), snapshot(b)
    capsys.readouterr()

    # A changed recipe on resume into another folder, with --overwrite: refused, B untouched.
    code = cli(["train", "--resume", str(a / "last.pt"), f"train.run_dir={b}", "--overwrite",
                "optim.lr=0.5"])  # fmt: skip
    assert code == 2
    line = error_line(capsys)
    assert "optim.lr" in line and "cannot resume" in line
    # A parameter the loss refuses, with --overwrite: refused before the old run is removed.
    assert tiny_run.train(b, "train.iterations=2", "--overwrite", "loss.params.margin=-1") == 2
    assert "margin" in error_line(capsys)
    # A P larger than the training classes: the key and the class count are named.
    assert tiny_run.train(b, "train.iterations=2", "--overwrite", "data.p=500") == 2
    line = error_line(capsys)
    assert "data.p = 500" in line and "holds only 88 classes" in line
    assert snapshot(a) == before_a and snapshot(b) == before_b


# --------------------------------------------------------------------------- resume rules


def test_a_moved_run_resumes_where_it_is_now_to_the_end(tmp_path, capsys, tiny_run):
    reference, old = tmp_path / "reference", tmp_path / "old"
    assert (
        tiny_run.train(
            reference, "train.iterations=6", "train.eval_every=2", "data.val_fraction=0.25"
        )
        == 0
    )
    assert (
        tiny_run.train(
            old,
            "train.iterations=6",
            "train.eval_every=2",
            "data.val_fraction=0.25",
            "--stop-after",
            "3",
        )
        == 0
    )
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(old, moved)
    capsys.readouterr()

    assert cli(["train", "--resume", str(moved / "last.pt")]) == 0
    assert not old.exists()  # the old path is not recreated
    assert steps(moved) == list(range(1, 7))
    assert (moved / "metrics.json").is_file()
    assert same_weights(moved / "last.pt", reference / "last.pt")
    assert same_weights(moved / "best.pt", reference / "best.pt")
    test = json.loads((moved / "metrics.json").read_text())["test"]
    assert test == json.loads((reference / "metrics.json").read_text())["test"]


def test_a_resume_into_another_folder_copies_the_run_and_finishes_there(tmp_path, capsys, tiny_run):
    reference, a, b = tmp_path / "reference", tmp_path / "a", tmp_path / "b"
    common = (
        "train.iterations=6",
        "train.eval_every=2",
        "data.val_fraction=0.25",
        "train.report=true",
    )
    assert tiny_run.train(reference, *common) == 0
    assert tiny_run.train(a, *common, "--stop-after", "4") == 0
    before_a = snapshot(a)
    capsys.readouterr()

    assert tiny_run.train(None, *common, "--resume", str(a / "last.pt"), f"train.run_dir={b}") == 0
    out = capsys.readouterr().out
    assert f"copied the run in {a}" in out
    assert snapshot(a) == before_a  # the original is as it was
    assert steps(b) == list(range(1, 7))  # the history before the resume came along
    assert same_weights(b / "last.pt", reference / "last.pt")
    assert (b / "report.md").is_file() and (b / "training_curves.png").is_file()
    test = json.loads((b / "metrics.json").read_text())["test"]
    assert test == json.loads((reference / "metrics.json").read_text())["test"]
    # The copy is a run of its own: it continues in place, the original is still resumable.
    assert load_checkpoint(b)["config"]["train"]["run_dir"] == str(b)


def test_a_copied_run_folder_resumes_in_the_copy(tmp_path, capsys, tiny_run):
    a, copy = tmp_path / "a", tmp_path / "copy"
    assert tiny_run.train(a, "train.iterations=4", "--stop-after", "2") == 0
    shutil.copytree(a, copy)
    before_a = snapshot(a)
    capsys.readouterr()
    # The recipe's train.run_dir (a) is not where this checkpoint is: the copy continues.
    assert tiny_run.train(a, "train.iterations=4", "--resume", str(copy)) == 2
    # train.run_dir named explicitly and different: that is a redirect into a, which holds a run
    line = error_line(capsys)
    assert "already holds a run" in line
    assert tiny_run.train(None, "train.iterations=4", "--resume", str(copy)) == 0
    assert snapshot(a) == before_a
    assert steps(copy) == [1, 2, 3, 4] and load_checkpoint(copy)["iteration"] == 4


def test_a_failed_first_start_does_not_block_its_retry(tmp_path, capsys, monkeypatch, tiny_run):
    run = tmp_path / "run"

    def unreadable(*args, **kwargs):
        raise ValueError("image x.jpg cannot be decoded")

    monkeypatch.setattr(train_module, "train_one_step", unreadable)
    assert tiny_run.train(run, "train.iterations=2", "train.tensorboard=true") == 2
    assert (run / "config.yaml").is_file() and (run / "tensorboard").is_dir()
    monkeypatch.undo()
    capsys.readouterr()
    assert tiny_run.train(run, "train.iterations=2", "train.tensorboard=true") == 0
    assert steps(run) == [1, 2]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_start_refused_before_writing_leaves_no_folder_behind(tmp_path, capsys, tiny_run):
    new, empty = tmp_path / "new" / "run", tmp_path / "mine"
    empty.mkdir()
    for run in (new, empty):
        assert tiny_run.train(run, "data.p=999") == 2
        assert "data.p" in capsys.readouterr().err
    assert not (tmp_path / "new" / "run").exists()  # created by the start: removed again
    assert empty.is_dir() and list(empty.iterdir()) == []  # the user's own folder stays


def test_a_held_lock_file_is_never_removed_under_its_holder(tmp_path):
    from rankedlist.folder_lock import FolderBusyError, FolderLock

    folder = tmp_path / "run"
    first = FolderLock(folder, "train", inside=True).acquire()
    with pytest.raises(FolderBusyError):
        FolderLock(folder, "train", inside=True).acquire()
    (folder / "config.yaml").write_text("x")  # the run wrote something: the folder is kept
    first.release()
    assert (folder / "config.yaml").is_file() and (folder / ".rankedlist.lock").is_file()


# --------------------------------------------------------------------------- what is whose


def user_files(folder: Path) -> dict[str, bytes]:
    files = {
        "config.yaml": b"my: own config\n",
        "report.md": b"# my notes\n",
        "tensorboard/other_experiment/events.out.tfevents.1.host": b"theirs",
        "tensorboard/other_experiment/notes.txt": b"theirs too",
        "data.csv": b"path,label\n",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def test_a_users_folder_is_never_taken_for_a_run(tmp_path, capsys, tiny_run):
    folder = tmp_path / "mine"
    files = user_files(folder)
    for extra in ([], ["--overwrite"]):
        assert tiny_run.train(folder, "train.iterations=2", *extra) == 2
        line = error_line(capsys)
        assert "config.yaml" in line and "report.md" in line and "move them" in line
        # Not one file touched, nothing added but the (empty) lock file of the refused start.
        assert snapshot(folder) == {**files, ".rankedlist.lock": b""}


def test_overwrite_removes_exactly_the_runs_own_files(tmp_path, capsys, tiny_run):
    run = tmp_path / "run"
    assert tiny_run.train(run, "train.iterations=2", "train.tensorboard=true") == 0
    old_events = set((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(old_events) == 1
    theirs = run / "tensorboard" / "other_experiment" / "events.out.tfevents.9.host"
    theirs.parent.mkdir()
    theirs.write_bytes(b"theirs")
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()

    assert tiny_run.train(run, "train.iterations=3", "train.tensorboard=true", "--overwrite") == 0
    assert theirs.read_bytes() == b"theirs" and (run / "notes.txt").read_text() == "mine"
    events = set((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and not events & old_events
    assert steps(run) == [1, 2, 3]
    listed = json.loads((run / "run_files.json").read_text())["files"]
    assert "notes.txt" not in listed and not any("other_experiment" in n for n in listed)


@pytest.mark.parametrize("state", ["listed", "legacy"])
def test_a_run_is_recognised_with_or_without_its_file_list(tmp_path, capsys, state, tiny_run):
    run = tmp_path / "run"
    assert tiny_run.train(run, "train.iterations=2") == 0
    if state == "legacy":  # a run of an older version: no run_files.json
        (run / "run_files.json").unlink()
    capsys.readouterr()
    assert tiny_run.train(run, "train.iterations=2") == 2
    assert "already holds a run" in error_line(capsys)
    assert tiny_run.train(run, "train.iterations=3", "--overwrite") == 0
    assert steps(run) == [1, 2, 3]


def test_a_run_says_which_images_it_skipped_and_lists_them(tmp_path, capsys, tiny_run):
    from PIL import Image

    rows, rng = ["path,label,split"], torch.Generator().manual_seed(0)
    for c in range(12):
        for i in range(3):
            name = f"imgs/{c}_{i}.png"
            pixels = torch.randint(0, 256, (24, 24, 3), generator=rng, dtype=torch.uint8)
            (tmp_path / "imgs").mkdir(exist_ok=True)
            Image.fromarray(pixels.numpy()).save(tmp_path / name)
            rows.append(f"{name},{c},{'train' if c < 8 else 'test'}")
    (tmp_path / "imgs" / "1_2.png").write_bytes(b"not an image")  # train
    (tmp_path / "imgs" / "9_0.png").unlink()  # test
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    code = tiny_run.train(
        run, "train.iterations=2", "data.dataset=csv", f"data.root={tmp_path / 'list.csv'}",
        "data.p=4", "data.options={skip_corrupt: true}",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Warning" not in captured.err and "dataset.skipped" not in captured.err
    listing = run / "skipped_images.txt"
    assert f"skipped 1 unreadable image of the train split (listed in {listing})" in captured.out
    assert f"skipped 1 unreadable image of the test split (listed in {listing})" in captured.out
    lines = [line.split("\t") for line in listing.read_text().splitlines()]
    assert [(s, Path(p).name) for s, p, _ in lines] == [("train", "1_2.png"), ("test", "9_0.png")]
    assert "skipped_images.txt" in json.loads((run / "run_files.json").read_text())["files"]
