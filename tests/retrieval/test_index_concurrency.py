"""One writer per index, and an index that survives a writer killed at any moment.

* Real processes: two ``rankedlist index add`` started together (their embedding slowed to a
  second, so that they overlap); a writer killed with SIGKILL while it holds the lock, during
  which a search still answers and another add is refused with one line naming the holder.
* A save killed (``os._exit`` in a forked child, as a SIGKILL would stop it) before, between and
  after the two renames of the folder swap: the next open gives the old or the new index
  (exactly its search results) and leaves no hidden ``.idx.*.tmp`` / ``.old`` folder; so does
  the next write.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _retrieval_helpers import listing, make_image_folder, write_checkpoint

from rankedlist.cli.main import main as cli
from rankedlist.retrieval import EmbeddingIndex
from rankedlist.retrieval import embedding_index as embedding_index_module

RUNTIME = ["--device", "cpu", "--no-progress", "--batch-size", "1"]

# The `rankedlist` command in a child process, its image embedding slowed by DELAY seconds (the
# time a real collection takes), started when the file GO appears; READY once imported, READY +
# ".embedding" once it holds the index and embeds.
SLOW_CLI = """
import sys, time
from pathlib import Path

ready, go, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
from rankedlist.cli.main import main
from rankedlist.retrieval import images_to_index

real_embed = images_to_index.embed_images


def slow_embed(*args, **kwargs):
    Path(str(ready) + ".embedding").touch()
    time.sleep(delay)
    return real_embed(*args, **kwargs)


images_to_index.embed_images = slow_embed
ready.touch()
while not go.exists():
    time.sleep(0.01)
sys.exit(main(sys.argv[4:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, 12 images in 3 classes, and two batches to add (4 and 6 images)."""
    root = tmp_path_factory.mktemp("index_concurrency")
    ckpt, _, _ = write_checkpoint(root / "run" / "best.pt")
    make_image_folder(root / "base", classes=3, per_class=4, seed=0)
    make_image_folder(root / "batch_a", classes=2, per_class=2, seed=1)
    make_image_folder(root / "batch_b", classes=3, per_class=2, seed=2)
    (root / "slow_cli.py").write_text(SLOW_CLI)
    build = ["index", "build", "--checkpoint", str(ckpt), "--images", str(root / "base"),
             "--out", str(root / "idx"), "--labels-from-folders", *RUNTIME]  # fmt: skip
    assert cli(build) == 0
    return root


def start_slow_add(root, tmp, name, images, delay, env):
    ready, go = tmp / f"{name}.ready", tmp / "go"
    argv = [sys.executable, str(root / "slow_cli.py"), str(ready), str(go), str(delay),
            "index", "add", "--index", str(tmp / "idx"), "--images", str(images),
            *RUNTIME]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, ready


def wait_for(path: Path, procs, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def images_in(folder: Path) -> list[str]:
    return sorted(str(p.resolve()) for p in folder.rglob("*.png"))


def test_two_adds_at_once_lose_no_batch(setup, tmp_path, child_env):
    root = setup
    shutil.copytree(root / "idx", tmp_path / "idx")
    env = child_env()
    procs, readies = [], []
    for name in ("a", "b"):
        proc, ready = start_slow_add(root, tmp_path, name, root / f"batch_{name}", 1.0, env)
        procs.append(proc)
        readies.append(ready)
    try:
        for ready in readies:
            wait_for(ready, procs)
        (tmp_path / "go").touch()  # both start their add within milliseconds of each other
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    index = EmbeddingIndex.load(tmp_path / "idx")
    batches = {name: images_in(root / f"batch_{name}") for name in ("a", "b")}
    added = sorted(i for i in index.items[12:])
    if codes == [0, 0]:  # one ran after the other: both batches are in
        assert len(index) == 12 + 4 + 6 and added == sorted(batches["a"] + batches["b"])
    else:
        assert sorted(codes) == [0, 2], outs
        won = codes.index(0)
        lost = 1 - won
        (line,) = outs[lost][1].splitlines()  # one line, and nothing on stdout
        assert outs[lost][0] == ""
        assert line.startswith(f"error: {tmp_path / 'idx'} is in use by another process (pid ")
        # The holder's line (pid, action); folder_lock writes it just after taking the lock, so
        # a refusal within those microseconds says "a process that is just starting" instead
        # (the SIGKILL test below checks the holder's pid where the lock is held for long).
        assert f"(pid {procs[won].pid}: index add, " in line or "just starting" in line
        name = "ab"[won]
        assert f"12 -> {12 + len(batches[name])} items" in outs[won][0]
        assert len(index) == 12 + len(batches[name]) and added == batches[name]
    assert listing(tmp_path) == sorted(["a.ready", "b.ready", "go", "idx"] + [
        f"{n}.ready.embedding" for n, c in zip("ab", codes, strict=True) if c == 0
    ])  # fmt: skip


def test_a_writer_killed_by_sigkill_leaves_no_stale_lock(setup, tmp_path, capsys, child_env):
    root = setup
    idx = shutil.copytree(root / "idx", tmp_path / "idx")
    query = str(root / "base" / "class_1" / "img_2.png")
    search = ["index", "search", "--index", str(idx), query, "--k", "3", "--json",
              str(tmp_path / "before.json"), *RUNTIME]  # fmt: skip
    assert cli(search) == 0
    before = json.loads((tmp_path / "before.json").read_text())
    proc, ready = start_slow_add(root, tmp_path, "a", root / "batch_a", 600, child_env())
    (tmp_path / "go").touch()
    try:
        wait_for(Path(str(ready) + ".embedding"), [proc])  # it holds the lock now
        # A search takes no lock: it answers, from the index as it was.
        search[-len(RUNTIME) - 1] = str(tmp_path / "during.json")
        capsys.readouterr()
        assert cli(search) == 0
        assert json.loads((tmp_path / "during.json").read_text()) == before
        # Another writer (`python -m rankedlist index add`) is refused at once, with one line
        # naming the index and the process that holds it.
        add = ["index", "add", "--index", str(idx), "--images", str(root / "batch_b"), *RUNTIME]
        second = subprocess.run(
            [sys.executable, "-m", "rankedlist", *add], env=child_env(), capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert (second.returncode, second.stdout) == (2, "")
        (line,) = second.stderr.splitlines()
        assert line.startswith(f"error: {idx} is in use by another process (pid {proc.pid}: ")
        assert "index add" in line and line.endswith("or use another folder")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(EmbeddingIndex.load(idx)) == 12  # the killed add changed nothing
    capsys.readouterr()
    assert cli(add) == 0  # the operating system dropped the dead writer's lock
    assert "12 -> 18 items" in capsys.readouterr().out
    index = EmbeddingIndex.load(idx)
    assert len(index) == 18 and sorted(index.items[12:]) == images_in(root / "batch_b")


# ---------------------------------------------------------------- a save killed mid-swap

OLD_N, NEW_N, DIM = 20, 26, 8


def arrays(n: int) -> tuple[np.ndarray, list[str]]:
    x = np.random.default_rng(3).normal(size=(NEW_N, DIM)).astype(np.float32)[:n]
    return x, [f"item_{i}.png" for i in range(n)]


def reference_top(n: int, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """numpy cosine top-k of ``queries`` over the first ``n`` rows (ties: lower row first)."""
    x = arrays(n)[0].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.suffix in (".tmp", ".old")]


def killed_save(index: EmbeddingIndex, folder: Path, kill_at: str) -> None:
    """``index.save(folder)`` in a forked child that dies (``os._exit``, no cleanup, as under
    SIGKILL) at ``kill_at``: writing its meta.json, at the 1st or 2nd rename, or while deleting
    the old index."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            replace, rmtree = os.replace, shutil.rmtree
            write_json = embedding_index_module.write_json
            renames = []

            def dying_replace(src, dst):
                renames.append(src)
                if kill_at == f"rename-{len(renames)}":
                    os._exit(9)
                return replace(src, dst)

            def dying_rmtree(path, *args, **kwargs):
                if kill_at == "deleting-old":
                    (Path(path) / "embeddings.npy").unlink()  # part of it is gone
                    os._exit(9)
                return rmtree(path, *args, **kwargs)

            def dying_write_json(path, obj):
                if kill_at == "writing" and Path(path).name == "meta.json":
                    os._exit(9)
                return write_json(path, obj)

            os.replace, shutil.rmtree = dying_replace, dying_rmtree
            embedding_index_module.write_json = dying_write_json
            index.save(folder)
        finally:
            os._exit(0)  # the kill point was not reached
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9, "the save was not killed where it should be"


# Where the save dies -> which index the next open must find: before the old index is moved
# aside the old one stays; once it is (the commit point) the complete new one takes its place.
KILLS = {
    "writing": "old",
    "rename-1": "old",
    "rename-2": "new",
    "deleting-old": "new",
}


@pytest.mark.parametrize("then", ["open", "write"])
@pytest.mark.parametrize("kill_at", sorted(KILLS))
def test_a_save_killed_anywhere_leaves_the_old_or_the_new_index(tmp_path, kill_at, then):
    folder = tmp_path / "idx"
    x_old, items_old = arrays(OLD_N)
    EmbeddingIndex(x_old, items_old).save(folder)
    grown = EmbeddingIndex(*arrays(NEW_N))
    killed_save(grown, folder, kill_at)
    assert hidden_leftovers(tmp_path)  # what the kill left: .idx.XXXXXXXX.tmp and/or .old

    expected_n = OLD_N if KILLS[kill_at] == "old" else NEW_N
    queries = np.random.default_rng(4).normal(size=(4, DIM))
    if then == "write":  # the next write settles it first, under the lock
        grown.add(np.ones((1, DIM)), ["one_more.png"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grown.save(folder)
        put_back = [str(w.message) for w in caught if "was put back in place" in str(w.message)]
        assert len(put_back) == (kill_at == "rename-2")
        assert listing(tmp_path) == ["idx"]
        assert EmbeddingIndex.load(folder).items == [*arrays(NEW_N)[1], "one_more.png"]
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = EmbeddingIndex.load(folder)  # the next open: a search
    assert listing(tmp_path) == ["idx"]  # no hidden .idx.*.tmp / .old left
    put_back = [str(w.message) for w in caught if "was put back in place" in str(w.message)]
    assert len(put_back) == (kill_at == "rename-2")  # said when the index had to be put back
    assert index.items == arrays(expected_n)[1]
    sims, rows = index.search(queries, 5)
    ref_sims, ref_rows = reference_top(expected_n, queries)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


@pytest.mark.parametrize("kill_at, found", [("writing", False), ("rename-1", True)])
def test_a_first_save_killed_leaves_the_new_index_or_none(tmp_path, kill_at, found):
    folder = tmp_path / "idx"
    killed_save(EmbeddingIndex(*arrays(NEW_N)), folder, kill_at)
    assert not folder.exists()
    if found:  # complete: all of it written, only the rename was missing
        with pytest.warns(UserWarning, match="the new index was put back in place from .idx."):
            assert EmbeddingIndex.load(folder).items == arrays(NEW_N)[1]
    else:
        with pytest.raises(FileNotFoundError, match="index folder .*idx not found"):
            EmbeddingIndex.load(folder)
    assert listing(tmp_path) == (["idx"] if found else [])
