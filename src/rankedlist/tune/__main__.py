"""``python -m rankedlist.tune ARGS``: ``rankedlist tune ARGS`` on its own (``--debug``, a
global option of ``rankedlist``, is accepted anywhere)."""

import sys

from rankedlist.cli.main import main

_args = sys.argv[1:]
_debug = ["--debug"] if "--debug" in _args else []
raise SystemExit(main([*_debug, "tune", *(a for a in _args if a != "--debug")]))
