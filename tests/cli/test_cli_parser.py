"""The ``rankedlist`` parser itself: one module per command, help on every option, overrides
hoisted by the options the parsers declare, and no look at the file system while parsing."""

from __future__ import annotations

import argparse
import importlib
import pathlib
import runpy
import sys

import pytest

from rankedlist.cli.main import (
    COMMANDS,
    build_parser,
    hoist_overrides,
    parse_command_line,
    subcommand_parsers,
    value_options,
)


def _all_parsers(parser: argparse.ArgumentParser, prefix: str = "rankedlist"):
    """``(name, parser)`` of the parser and every command (and sub-action) under it."""
    yield prefix, parser
    for name, sub in subcommand_parsers(parser).items():
        yield from _all_parsers(sub, f"{prefix} {name}")


def test_every_option_of_every_command_has_a_help_string():
    missing = [
        f"{name}: {'/'.join(action.option_strings) or action.dest}"
        for name, parser in _all_parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and not (action.help and action.help.strip())
    ]
    assert not missing, missing


def test_each_command_is_a_module_with_add_parser_and_run():
    assert list(subcommand_parsers(build_parser())) == list(COMMANDS)
    for name, module in COMMANDS.items():
        assert module.__name__ == f"rankedlist.cli.{name.replace('-', '_')}"
        assert callable(module.add_parser) and callable(module.run)


@pytest.mark.parametrize(
    ("package", "gone"),
    [
        ("rankedlist.tune", ("add_tune_parser", "run_tune_command")),
        ("rankedlist.compare", ("add_compare_parser", "run_compare_command")),
        ("rankedlist.retrieval", ("add_index_parser", "run_index_command")),
        ("rankedlist.export", ("add_export_parser", "run_export_command")),
    ],
)
def test_the_layers_below_export_no_command_line(package, gone):
    module = importlib.import_module(package)
    assert not set(gone) & set(module.__all__)
    assert not any(hasattr(module, name) for name in gone)


def test_the_value_options_are_read_from_the_parsers():
    commands = subcommand_parsers(build_parser())
    takes, may_take = value_options(commands["train"])
    assert {"--config", "-c", "--stop-after"} <= takes and may_take == {"--resume"}
    assert not {"--overwrite", "--allow-config-change", "-h", "--help"} & takes
    takes, _ = value_options(commands["compare"])
    assert {"--recipes", "--seeds", "--sampler-seed", "--plan"} <= takes


@pytest.mark.parametrize("command", ["train", "evaluate", "show-config", "tune", "compare"])
def test_a_word_after_an_option_that_takes_a_value_is_that_value(command):
    parser = build_parser()
    takes, _ = value_options(subcommand_parsers(parser)[command])
    for option in sorted(takes):
        argv = [command, option, "data.p=1", "optim.lr=2"]
        assert hoist_overrides(argv, parser) == [command, "optim.lr=2", option, "data.p=1"]


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "runs/x", "data.root=/d", "--split", "val"],
        ["report", "--split", "val", "runs/x", "data.root=/d"],
        ["report", "--split", "val", "data.root=/d", "runs/x", "--out", "a=b.html"],
    ],
)
def test_reports_run_folder_may_stand_anywhere_among_the_options(argv):
    args = parse_command_line(argv)
    assert args.split == "val" and args.overrides[0] in ("runs/x", "data.root=/d")
    assert sorted(args.overrides) == ["data.root=/d", "runs/x"]
    assert args.out == (argv[-1] if "--out" in argv else None)


def test_the_words_of_an_option_that_takes_several_stay_its_values():
    args = parse_command_line(
        ["compare", "--recipes", "glyphs", "glyphs_ms", "optim.lr=1", "--seeds", "0", "1"]
    )
    assert args.recipes == ["glyphs", "glyphs_ms"] and args.overrides == ["optim.lr=1"]
    assert [int(s) for s in args.seeds] == [0, 1]


@pytest.mark.parametrize(
    ("word", "resume", "overrides"),
    [
        ("a=b.pt", "a=b.pt", ["optim.lr=1"]),  # no such file: still the path, by its words
        ("runs/x=1/last.pt", "runs/x=1/last.pt", ["optim.lr=1"]),
        ("data.p=16", "", ["data.p=16", "optim.lr=1"]),
        ("loss.params.margin=0.2", "", ["loss.params.margin=0.2", "optim.lr=1"]),
        ("description=mine", "", ["description=mine", "optim.lr=1"]),
    ],
)
def test_resume_tells_its_path_from_an_override_without_the_file_system(
    word, resume, overrides, monkeypatch
):
    def no_disk(*_args, **_kwargs):
        raise AssertionError("parsing looked at the file system")

    for name in ("exists", "is_file", "is_dir", "stat"):
        monkeypatch.setattr(pathlib.Path, name, no_disk)
    args = parse_command_line(["train", "--resume", word, "optim.lr=1"])
    assert args.resume == resume and args.overrides == overrides


def test_load_config_finds_a_recipe_by_name_as_the_command_line_does(tmp_path, monkeypatch):
    from rankedlist.training.config import load_config
    from rankedlist.training.recipes import shipped_recipes_dir

    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped recipe
    by_name = load_config("glyphs", ["optim.lr=0.5"])
    assert by_name == load_config(shipped_recipes_dir() / "glyphs.yaml", ["optim.lr=0.5"])
    assert by_name.optim.lr == 0.5
    (tmp_path / "configs").mkdir()  # ./configs/NAME.yaml comes first, as for --config NAME
    (tmp_path / "configs" / "glyphs.yaml").write_text("base: glyphs\ntrain:\n  seed: 7\n")
    assert load_config("glyphs").train.seed == 7
    with pytest.raises(FileNotFoundError, match="neither a file nor a recipe name"):
        load_config("no_such_recipe")


def test_python_m_rankedlist_tune_is_the_tune_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rankedlist.tune", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("rankedlist.tune", run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: rankedlist tune")
