"""A test's worker script loaded as a module, to compute in the test's own process what the
worker computes in its child processes (the script stays runnable on its own); any other script
too (a benchmark whose numbers a test checks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_worker(path: Path) -> ModuleType:
    """The Python file ``path`` as a module named after it (not added to ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
