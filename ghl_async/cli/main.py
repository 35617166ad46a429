"""The ``ghl-async`` command: assembles the commands' parsers and runs the one named.

Each command registers its own parser and handler (``register(subparsers)`` in
:mod:`~ghl_async.cli.export`, :mod:`~ghl_async.cli.sync`, :mod:`~ghl_async.cli.demo`,
:mod:`~ghl_async.cli.serve_fake` and :mod:`~ghl_async.cli.queue`); this module turns
what they raise into one line on stderr and the exit code (see
:mod:`~ghl_async.cli.exits`), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ghl_async._version import __version__
from ghl_async.cli.args import Parser, Subparsers
from ghl_async.cli.demo import register as register_demo
from ghl_async.cli.exits import EXIT_INTERRUPTED, EXIT_USAGE, CommandExit, UsageError, say
from ghl_async.cli.export import register as register_export
from ghl_async.cli.queue import register as register_queue
from ghl_async.cli.serve_fake import register as register_serve_fake
from ghl_async.cli.sync import register as register_sync

__all__ = ["build_parser", "main"]

#: What each command sets as its ``handler``: the namespace in, the exit code out.
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

#: Each command's ``register``, in the order ``--help`` lists the commands.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    register_export,
    register_sync,
    register_demo,
    register_serve_fake,
    register_queue,  # worker and status
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ghl-async`` parser with every command's subparser."""
    parser = Parser(
        prog="ghl-async", description="Read HighLevel conversations fast, within budget."
    )
    parser.add_argument("--version", action="version", version=f"ghl-async {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        say(f"ghl-async: {exc}")
        return EXIT_USAGE
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except UsageError as exc:
        say(f"ghl-async: {exc}")
        return EXIT_USAGE
    except CommandExit as exc:
        say(f"ghl-async: {exc}")
        return exc.code
    except KeyboardInterrupt:
        on_interrupt: Callable[[argparse.Namespace], str] | None = getattr(
            args, "on_interrupt", None
        )
        if on_interrupt is not None:
            say(on_interrupt(args))
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
