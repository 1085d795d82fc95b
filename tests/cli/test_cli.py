"""The ``rankedlist`` command line: an end-to-end glyph run, re-evaluation, errors and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rankedlist.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
GLYPHS = str(ROOT / "configs" / "glyphs.yaml")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_run):
    """One tiny run through the CLI, with validation, report and TensorBoard (shared)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "--config",
            GLYPHS,
            *tiny_run.core,
            "train.iterations=6",
            "train.eval_every=3",
            "data.val_fraction=0.25",
            f"train.run_dir={run_dir}",
        ]
    )
    return code, run_dir


def test_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "recipes", "show-config"):
        assert command in out


@pytest.mark.slow
def test_train_writes_the_run_folder(demo_run, capsys):
    code, run_dir = demo_run
    assert code == 0
    for name in (
        "config.yaml",
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "metrics.json",
        "report.md",
        "training_curves.png",
        "recall_at_k.png",
        "embedding_map.png",
        "retrieval_grid.png",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["recall@1"] <= 1.0
    assert {"map@r", "nmi", "recall@8"} <= set(metrics["test"])
    assert metrics["config"]["train"]["iterations"] == 6


@pytest.mark.slow
def test_evaluate_reproduces_the_test_metrics(demo_run, capsys, tmp_path):
    _, run_dir = demo_run
    out_file = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(run_dir / "best.pt"), "--output", str(out_file)])
    assert code == 0
    assert "recall@1" in capsys.readouterr().out
    again = json.loads(out_file.read_text())["fused"]
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]
    for key in ("recall@1", "map@r", "r_precision"):
        assert again[key] == pytest.approx(saved[key], abs=1e-6)


def test_recipes_lists_every_config(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for path in (ROOT / "configs").glob("*.yaml"):
        assert path.stem in out


def test_show_config_resolves_a_recipe_name_and_dashed_overrides(capsys):
    assert main(["show-config", "--config", "glyphs", "--optim.lr", "0.5", "data.p=4"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "p: 4" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["trainer.iterations=3"], ["unknown key 'trainer'", "valid keys"]),
        (["model.depth=3"], ["unknown key 'model.depth'", "embedding_dim"]),
        (["optim.lr=fast"], ["optim.lr", "number"]),
        (["loss.params.margn=0.1"], ["margn", "valid parameters", "margin"]),
        (["data.dataset=cub200", "data.root=/nonexistent/cub"], ["/nonexistent/cub"]),
        (["train.amp=fp16"], ["fp16", "CUDA"]),
    ],
)
def test_bad_config_or_data_exits_2_with_a_message(args, words, capsys, tmp_path, tiny_run):
    argv = ["train", "--config", GLYPHS, *tiny_run.core, f"train.run_dir={tmp_path}", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err


def test_missing_config_file_exits_2(capsys, tmp_path):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, tiny_run):
    """A real process: ``python -m rankedlist`` stopped by SIGTERM while it trains."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rankedlist", "train", "--config", GLYPHS, *tiny_run.core,
           "train.iterations=100000", "train.tensorboard=false",
           f"train.run_dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("iteration "):  # training has started: the handler is in place
                proc.send_signal(signal.SIGTERM)
                break
        rest = "".join(seen) + proc.stdout.read()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    assert code == 143, rest
    assert "checkpoint saved" in rest and "--resume" in rest
    import torch

    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["iteration"] >= 1


@pytest.mark.slow
def test_resume_without_config_extends_a_finished_run(demo_run, tmp_path, capsys):
    import shutil

    _, run_dir = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    code = main(
        ["train", "--resume", str(copy / "last.pt"), "train.iterations=8", f"train.run_dir={copy}"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "iteration 8/8" in out
    steps = [json.loads(x)["step"] for x in (copy / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 8


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "glyphs", "--resume", "data.p=16", "train.log_every=1"],
        ["train", "data.p=16", "--resume", "--config", "glyphs", "train.log_every=1"],
        ["train", "--resume", "data.p=16", "--config", "glyphs", "train.log_every=1"],
        ["train", "data.p=16", "train.log_every=1", "--config", "glyphs", "--resume"],
    ],
)
def test_overrides_and_resume_parse_in_any_order(argv):
    from rankedlist.cli.main import parse_command_line

    args = parse_command_line(argv)
    assert args.overrides == ["data.p=16", "train.log_every=1"]
    assert args.resume == "" and args.config == "glyphs"


def test_option_values_with_an_equals_sign_stay_values(tmp_path, monkeypatch):
    from rankedlist.cli.main import parse_command_line

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a=b.pt").write_bytes(b"")
    args = parse_command_line(["train", "--config", "x=y.yaml", "--resume", "a=b.pt", "optim.lr=1"])
    assert args.config == "x=y.yaml" and args.resume == "a=b.pt"
    assert args.overrides == ["optim.lr=1"]


def test_a_reader_that_leaves_early_is_not_an_error():
    # `rankedlist recipes | head -1`: the pipe is closed before the command writes.
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankedlist", "recipes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": src},
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_shipped_recipes_are_found_from_any_folder(tmp_path, monkeypatch, capsys):
    from rankedlist.training.config import load_config
    from rankedlist.training.recipes import find_recipe, list_recipes, shipped_recipes_dir

    monkeypatch.chdir(tmp_path)  # no configs/ here
    shipped = shipped_recipes_dir()
    assert shipped.parent.name == "rankedlist" and (shipped / "glyphs.yaml").is_file()
    assert find_recipe("glyphs") == shipped / "glyphs.yaml"
    names = [name for name, _ in list_recipes()]
    assert {"glyphs", "glyphs_contrastive", "sop_bninception"} <= set(names)
    # A user's own recipe starts from a shipped one by name.
    (tmp_path / "mine.yaml").write_text("base: glyphs\ntrain:\n  seed: 7\n")
    mine, glyphs = load_config(tmp_path / "mine.yaml"), load_config(shipped / "glyphs.yaml")
    assert mine.train.seed == 7 and mine.loss == glyphs.loss and mine.model == glyphs.model


def test_version_is_printed_and_recorded(tmp_path, capsys):
    import yaml

    from rankedlist import __version__
    from rankedlist.training.config import config_from_dict, load_config, save_config

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rankedlist {__version__}"
    path = save_config(config_from_dict({}), tmp_path / "config.yaml")
    assert path.read_text().startswith(f"# written by rankedlist {__version__}\n")
    assert load_config(path) == config_from_dict({})  # still a recipe `--config` reads back
    assert "description" in yaml.safe_load(path.read_text())


def test_a_missing_extra_is_one_error_line_naming_it(monkeypatch, capsys, tmp_path):
    import builtins
    import importlib

    real_import, real_import_module = builtins.__import__, importlib.import_module

    def missing(name):
        return ModuleNotFoundError(f"No module named {name!r}", name="pytorch_metric_learning")

    def no_pml(name, *args, **kwargs):
        if name.startswith("pytorch_metric_learning"):
            raise missing(name)
        return real_import(name, *args, **kwargs)

    def no_pml_module(name, *args, **kwargs):
        # import_module returns the submodule itself (__import__ the top package): other names
        # go to the real one, or torch's lazy imports (triton's backends) break
        if name.startswith("pytorch_metric_learning"):
            raise missing(name)
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pml)
    monkeypatch.setattr("importlib.import_module", no_pml_module)
    code = main(["train", "--config", "glyphs_contrastive", f"train.run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (
        "error: loss.name=contrastive (a pytorch-metric-learning baseline) needs "
        "pytorch-metric-learning, which is not installed; install it with: "
        "pip install 'rankedlist[baselines]'"
    )


@pytest.mark.slow
def test_evaluate_through_an_index(demo_run, capsys, tmp_path):
    """--index-method exact reproduces the exact evaluation; ivf is scored beside it."""
    _, run_dir = demo_run
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(run_dir), "--index-method", "exact",
                 "--output", str(out)]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())
    via = metrics["fused via exact index"]
    for key in ("recall@1", "recall@2", "r_precision", "map@r"):
        assert via[key] == pytest.approx(metrics["fused"][key], abs=1e-9)
    assert main(["evaluate", "--checkpoint", str(run_dir), "--nprobe", "4"]) == 2
    assert "need --index-method" in capsys.readouterr().err
