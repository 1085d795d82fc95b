"""The import graph, parsed from the source: data flows one way, and nothing imports upward.

Every ``import rankedlist...`` / ``from rankedlist... import`` is read with ``ast`` (inside
functions too: a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` are
annotations only and are left out. A change that adds a cycle or an upward import fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rankedlist"

# What each subpackage may import from rankedlist. "(root)" is the package itself (its
# __version__); atomic_write, folder_lock and extras are the shared top-level modules.
ALLOWED = {
    "data": set(),
    "models": {"extras"},  # optional weight packages (the pretrained extra)
    "losses": set(),
    "evaluation": set(),
    "report": {"(root)", "atomic_write", "evaluation"},
    "training": {
        "(root)", "atomic_write", "folder_lock", "extras", "data", "models", "losses",
        "evaluation", "report",
    },
    "export": {
        "(root)", "atomic_write", "folder_lock", "extras", "data", "models", "evaluation",
        "training",
    },
    "retrieval": {
        "(root)", "atomic_write", "folder_lock", "extras", "data", "models", "evaluation",
        "training", "export",
    },
    "tune": {
        "(root)", "atomic_write", "folder_lock", "extras", "data", "models", "losses",
        "evaluation", "report", "training",
    },
    "compare": {
        "(root)", "atomic_write", "folder_lock", "extras", "data", "models", "losses",
        "evaluation", "report", "training", "tune",
    },
    "serve": {
        "(root)", "atomic_write", "folder_lock", "extras", "data", "models", "evaluation",
        "training", "export", "retrieval",
    },
    "cli": {
        "(root)", "atomic_write", "folder_lock", "extras", "data", "models", "losses",
        "evaluation", "report", "training", "export", "retrieval", "tune", "compare", "serve",
    },
    "atomic_write": set(),
    "folder_lock": set(),
    "extras": set(),
}  # fmt: skip

# The training room, in reading order: each module imports only modules above it.
TRAINING_ORDER = [
    "recipes", "loader_workers", "distributed", "global_batch_loss", "loss_factory",
    "config_schema", "config", "checkpoint", "checkpoint_convert", "health",
    "input_normalisation",
    "amp", "optim", "recipe_data", "batch_feed",
    "run_folder", "resume_config", "run_log", "step", "evaluation_pass", "run", "checkpoint_model",
    "signals",
    "final_test", "train_result", "train", "evaluate_checkpoint",
]  # fmt: skip


def _imports(path: Path) -> set[str]:
    """Dotted rankedlist modules imported by ``path`` (outside ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "rankedlist.training":  # names from the package's __init__
                out.update(f"rankedlist.training.{a.name}" for a in node.names)
            elif node.module.split(".")[0] == "rankedlist":
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "rankedlist")
    return out


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name != "__main__.py")


def test_relative_imports_are_not_used():
    for path in _modules():
        tree = ast.parse(path.read_text())
        relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative, f"{path}: use absolute imports (the graph test reads them)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_subpackages_import_only_downward(path):
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts == ("__init__",):
        return  # the package's own face: it re-exports the loss
    sub = parts[0]
    assert sub in ALLOWED, f"new subpackage {sub}: add it to ALLOWED with its place in the flow"
    for module in _imports(path):
        target = _subpackage(module)
        if target == sub:
            continue
        assert target in ALLOWED[sub], f"{path.relative_to(SRC)} imports {module} (upward)"


def test_the_training_room_reads_top_to_bottom():
    files = {p.stem for p in (SRC / "training").glob("*.py")} - {"__init__"}
    assert files == set(TRAINING_ORDER), "add the new module to TRAINING_ORDER where it belongs"
    for rank, name in enumerate(TRAINING_ORDER):
        for module in _imports(SRC / "training" / f"{name}.py"):
            parts = module.split(".")
            if parts[:2] != ["rankedlist", "training"] or len(parts) < 3:
                continue
            assert TRAINING_ORDER.index(parts[2]) < rank, f"training/{name}.py imports {module}"


def test_the_check_would_catch_an_upward_import(tmp_path):
    """The parser sees lazy imports inside functions and skips TYPE_CHECKING blocks."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from rankedlist.training.run import Run\n"
        "def f():\n    from rankedlist.training.train import main\n    import rankedlist.cli\n"
    )
    assert _imports(probe) == {"rankedlist.training.train", "rankedlist.cli"}


READABLE_LINES = 500  # a module longer than this is asking to be split by role


def test_modules_stay_readable():
    """No module is longer than READABLE_LINES (500) lines: past that, split it by role."""
    long = {
        str(p.relative_to(SRC)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > READABLE_LINES
    }
    assert not long, long
