"""The README is the user's door: its commands must parse and its code must run."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from rankedlist.cli.main import parse_command_line
from rankedlist.training.config import load_config
from rankedlist.training.recipes import find_recipe

README = Path(__file__).resolve().parents[1] / "README.md"


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def subcommand_parsers() -> list[list[str]]:
    """Every `rankedlist ...` / `torchrun ... -m rankedlist ...` command of the bash blocks."""
    commands = []
    for block in _code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "rankedlist" not in words:
                continue
            start = words.index("rankedlist") + 1
            if words[0] == "rankedlist" or words[start - 2] == "-m":
                commands.append(words[start:])
    return commands


def test_readme_has_the_two_commands_first():
    text = README.read_text(encoding="utf-8")
    first_block = _code_blocks("bash")[0]
    assert "make demo" in first_block and "make test" in first_block
    assert text.index("make demo") < text.index("## ")


@pytest.mark.parametrize("argv", subcommand_parsers(), ids=" ".join)
def test_readme_command_parses_and_its_recipe_resolves(argv):
    if argv == ["--version"]:
        with pytest.raises(SystemExit, match="0"):  # argparse prints the version and exits
            parse_command_line(argv)
        return
    args = parse_command_line(argv)
    if args.command in ("train", "show-config") and args.config:
        # The recipe exists and every override is a valid key of a valid type.
        load_config(find_recipe(args.config), args.overrides)


def test_readme_commands_were_found():
    assert {"train", "index"} <= {argv[0] for argv in subcommand_parsers()}
    guide = (README.parent / "docs" / "guide.md").read_text(encoding="utf-8")
    for name in ("train", "evaluate", "recipes", "show-config", "index", "tune", "compare"):
        assert f"rankedlist {name}" in guide, name


def test_readme_loss_example_runs():
    (example,) = [b for b in _code_blocks("python") if "RankedListLoss" in b]
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)  # noqa: S102 - our own README
    loss, stats = namespace["loss"], namespace["loss_fn"].last_stats
    assert loss.ndim == 0 and bool(loss.isfinite())
    assert namespace["embeddings"].grad is not None
    assert set(stats) >= {"active_pos", "active_neg", "nonzero_frac"}


DOCS = README.parent / "docs"


def test_the_docs_commands_parse_too():
    """The guide's and the results' commands are held to the README's standard."""
    for name in ("guide.md", "results.md"):
        text = (DOCS / name).read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] != ["rankedlist"]:
                    continue
                args = parse_command_line(words[1:])
                if args.command in ("train", "show-config") and args.config:
                    load_config(find_recipe(args.config), args.overrides)


def test_the_docs_the_readme_links_exist():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (README.parent / target).is_file(), target


def test_architecture_lists_the_training_modules_in_the_tested_order():
    """docs/ARCHITECTURE.md's reading order of the training modules is the one the architecture
    test enforces."""
    source = (README.parent / "tests" / "test_architecture.py").read_text(encoding="utf-8")
    assignment = re.search(r"TRAINING_ORDER = (\[.*?\])", source, flags=re.S).group(1)
    TRAINING_ORDER = ast.literal_eval(assignment)  # noqa: N806 - the architecture test's name
    text = (DOCS / "ARCHITECTURE.md").read_text(encoding="utf-8")
    start = text.index("imported in this\n  order only")
    end = text.index("- A run folder holds", start)
    named = re.findall(r"`([a-z_]+)`", text[start:end])
    listed = [n for n in dict.fromkeys(named) if n in TRAINING_ORDER]
    assert listed == TRAINING_ORDER
