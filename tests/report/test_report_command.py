"""``rankedlist report`` and the pages of ``train`` and ``evaluate`` end to end, on a folder of
the user's own images trained from the glyph recipe (the demo's words must not follow it), and
the commands' errors, each one ``error:`` line before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _browser import browser, console_errors
from PIL import Image
from test_html_report import check_headline, check_self_contained

from rankedlist.cli.main import main as cli
from rankedlist.folder_lock import FolderLock

# Sorted, the last three folders are the test classes: a CJK name and an HTML one among them.
CLASSES = ["class0", "class1", "class2", "class3", "~<img src=x onerror=alert(1)>", "字"]
DEMO_WORDS = ("Demo", "about 20 seconds", "embedded glyphs", "2 CPU cores")
FAST = [
    "data.dataset=folder", "data.image_size=32", "data.p=3", "data.k=2", "data.val_fraction=0",
    "model.embedding_dim=16", "model.options={widths: [8, 16, 16, 32]}", "train.iterations=3",
    "train.eval_every=0", "train.device=cpu", "train.tensorboard=false", "train.report=true",
]  # fmt: skip


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A finished run on 6 class folders x 4 images, trained from the glyph recipe."""
    base = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (base / "photos" / name).mkdir(parents=True)
        colour = rng.integers(0, 256, size=3)
        for i in range(4):
            pixels = np.clip(colour + rng.integers(-30, 30, size=(40, 40, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(base / "photos" / name / f"{i}.png")
    run = base / "run"
    code = cli(["train", "--config", "glyphs", f"data.root={base / 'photos'}", *FAST,
                f"train.run_dir={run}"])  # fmt: skip
    assert code == 0
    return run


@pytest.mark.slow
def test_folder_run_pages_carry_its_own_words_and_work_in_chromium(folder_run, tmp_path, capsys):
    metrics = json.loads((folder_run / "metrics.json").read_text())
    page = (folder_run / "report.html").read_text(encoding="utf-8")
    markdown = (folder_run / "report.md").read_text(encoding="utf-8")
    for text in (page, markdown):
        assert not [w for w in DEMO_WORDS if w in text]
        assert f"on the image folder {folder_run.parent / 'photos'}" in text
        assert "tested on 12 test images" in text
    check_self_contained(page)
    assert "report.html" in json.loads((folder_run / "run_files.json").read_text())["files"]

    # `rankedlist report` re-evaluates the last checkpoint: the same numbers, another file.
    out = tmp_path / "pages" / "again.html"
    out.parent.mkdir()
    assert cli(["report", str(folder_run), "--out", str(out), "data.num_workers=0"]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    # `rankedlist evaluate` writes its page beside the checkpoint by default.
    assert cli(["evaluate", "--checkpoint", str(folder_run)]) == 0
    evaluated = folder_run / "evaluate-last-test.html"
    assert evaluated.is_file()
    # A page written into the run folder joins the run's files (--overwrite clears it with the
    # run; a later start does not refuse it as a stranger's file), under the folder's lock.
    assert (
        "evaluate-last-test.html"
        in json.loads((folder_run / "run_files.json").read_text())["files"]
    )
    before = (folder_run / "report.html").read_bytes()
    with FolderLock(folder_run, "train", inside=True).acquire():
        assert cli(["report", str(folder_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train" in err and err.count("\n") == 1
    assert (folder_run / "report.html").read_bytes() == before

    copy = tmp_path / "moved"
    shutil.copytree(folder_run, copy)
    with browser() as driver:
        for path in (copy / "report.html", out, copy / "evaluate-last-test.html"):
            driver.get(path.as_uri())
            assert console_errors(driver) == [], path
            check_headline(driver, metrics)
            names = driver.execute_script(
                "return [...document.querySelectorAll('#classes-body a')].map((a) => a.textContent)"
            )
            assert sorted(names) == sorted(CLASSES[3:])
            assert driver.execute_script(
                "return [...document.images].every((i) => i.complete && i.naturalWidth > 0)"
            )
        driver.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.fixture
def fake_run(tmp_path):
    """A folder that looks like a run (the errors below are found before anything is read)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"not read")
    return run


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["report", "{tmp}/missing"], ["run folder", "missing", "not found", "train.run_dir"]),
        (["report", "{tmp}"], ["holds no last.pt", "finished"]),
        (["report", "{run}", "{tmp}", "data.p=3"], ["one run folder", "data.p=3"]),
        (["report", "{run}", "--out", "{tmp}"], ["is a folder", "file name"]),
        (["report", "{run}", "--out", "{tmp}/no/such/page.html"], ["does not exist", "create"]),
        (
            ["evaluate", "--checkpoint", "{run}", "--report", "{tmp}/x.html", "--no-report"],
            ["contradict"],
        ),  # fmt: skip
        (["evaluate", "--checkpoint", "{run}", "--report", "{tmp}/no/x.html"], ["does not exist"]),
        (["evaluate", "--checkpoint", "{run}", "--report", "{tmp}"], ["is a folder"]),
    ],
)
def test_report_errors_are_one_line(fake_run, tmp_path, capsys, argv, words):
    argv = [a.format(tmp=tmp_path, run=fake_run) for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert all(w in err for w in words), err
    assert (fake_run / "last.pt").read_bytes() == b"not read"  # nothing touched


def test_report_takes_overrides_anywhere():
    """`rankedlist` moves key=value words after the command word; the run folder stays the run
    folder wherever the overrides stand (it comes before the options)."""
    from rankedlist.cli.main import parse_command_line
    from rankedlist.cli.report import _run_and_overrides

    for argv in (
        ["report", "runs/x", "data.root=/d", "--split", "val"],
        ["report", "data.root=/d", "runs/x", "--split", "val"],
        ["report", "runs/x", "--split", "val", "data.root=/d"],
    ):
        args = parse_command_line(argv)
        assert args.split == "val"
        assert _run_and_overrides(args.overrides) == (Path("runs/x"), ["data.root=/d"])
