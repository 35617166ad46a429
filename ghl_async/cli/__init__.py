"""The ``ghl-async`` command line: ``main`` is the entry point (``python -m ghl_async``)."""

from ghl_async.cli.main import main

__all__ = ["main"]
