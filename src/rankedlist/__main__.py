"""``python -m rankedlist`` (and ``torchrun -m rankedlist``) run the command-line interface."""

from rankedlist.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
