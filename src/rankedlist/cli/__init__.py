"""The ``rankedlist`` command line (``rankedlist --help``; also ``python -m rankedlist``)."""

from rankedlist.cli.main import main

__all__ = ["main"]
