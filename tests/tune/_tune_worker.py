"""One ``rankedlist tune`` worker process for test_tune_workers.py.

``python _tune_worker.py GO_FILE ARGS...``: waits (after the imports) until GO_FILE exists, so
that concurrent workers start claiming trials together, then runs ``rankedlist tune ARGS``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _tune_helpers, and _tiny_run that it imports

# The slow imports happen before the start line.
import optuna  # noqa: E402,F401
from _tune_helpers import register_recorded_glyphs, run_cli  # noqa: E402

import rankedlist.training.train  # noqa: E402,F401
import rankedlist.tune.search  # noqa: E402,F401

if __name__ == "__main__":
    go = Path(sys.argv[1])
    register_recorded_glyphs()
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.05)
    raise SystemExit(run_cli(["tune", *sys.argv[2:]]))
