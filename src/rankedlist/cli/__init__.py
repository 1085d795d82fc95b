"""The ``rankedlist`` command line (``rankedlist --help``; also ``python -m rankedlist``).

One module per command (``train``, ``evaluate``, ``recipes``, ``show_config``, ``index``,
``export``, ``tune``, ``compare``, ``convert_checkpoint``), each with ``add_parser(subparsers)``
and ``run(args) -> int``; :mod:`rankedlist.cli.main` assembles the parser and runs the command,
:mod:`rankedlist.cli.errors` turns an error a user can fix into one ``error:`` line.
"""

from rankedlist.cli.main import main

__all__ = ["main"]
