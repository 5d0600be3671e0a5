"""The command line (`hfedmoe ...`): :mod:`app` holds the commands, :mod:`progress` the live display."""

from hfedmoe.cli.app import app, main

__all__ = ["app", "main"]
