"""``python -m rankedlist.tune ARGS``: ``rankedlist tune ARGS`` on its own."""

from rankedlist.tune.cli import main

raise SystemExit(main())
