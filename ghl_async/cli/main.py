"""The ``ghl-async`` command: assembles the commands' parsers and runs the one named.

Each command registers its own parser and handler (``register(subparsers)`` in
:mod:`~ghl_async.cli.export`, :mod:`~ghl_async.cli.sync`, :mod:`~ghl_async.cli.demo`,
:mod:`~ghl_async.cli.serve_fake` and :mod:`~ghl_async.cli.queue`); this module turns
what they raise into one line on stderr and the exit code (see
:mod:`~ghl_async.cli.exits`), never a traceback: a reader of stdout that goes away
(``ghl-async status ... | head``) is exit 141 on every command.

``-v`` logs the client's retries, 429s and learnt budgets on stderr, ``-vv`` one line
per request too (see :mod:`ghl_async._logging`); ``GHL_ASYNC_LOG=info|debug`` does the
same without the flag. Before a command or after it (``ghl-async -v export ...`` or
``ghl-async export ... -v``), the counts add up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ghl_async import _logging
from ghl_async._version import __version__
from ghl_async.cli.args import Parser, Subparsers
from ghl_async.cli.demo import register as register_demo
from ghl_async.cli.exits import (
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    EXIT_USAGE,
    CommandExit,
    UsageError,
    say,
)
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


#: Descriptions for ``COMMAND --help`` of the commands that register only a one-line help.
DESCRIPTIONS: dict[str, str] = {
    "demo": "Start a fake HighLevel in this process (a budget, a few injected faults), "
    "export its conversations to JSON Lines and mirror its location into SQLite, then "
    "print what was read, how close to the budget it ran, and the server's own counts. "
    "No token or network needed; exit 0 when every message arrived within the budget.",
    "status": "Show a queued export's progress (export --locations-file ... --queue): "
    "each location's state, messages and errors, read from the queue's Redis from any "
    "machine. Needs the arq extra.",
    "worker": "Run an arq worker that executes export --queue's jobs, one location each, "
    "with the location tokens given. Needs the arq extra.",
}

_VERBOSE_HELP = "log retries and 429s (-v), and every request (-vv), on stderr"


def build_parser() -> argparse.ArgumentParser:
    """The ``ghl-async`` parser with every command's subparser."""
    parser = Parser(
        prog="ghl-async",
        description="Read HighLevel conversations fast, within budget. Logging: -v, or "
        f"{_logging.ENV_VAR}=info|debug in the environment.",
    )
    parser.add_argument("--version", action="version", version=f"ghl-async {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    for name, command in subparsers.choices.items():
        if command.description is None and name in DESCRIPTIONS:
            command.description = DESCRIPTIONS[name]
        command.add_argument(
            "-v", "--verbose", dest="verbose_after", action="count", default=0, help=_VERBOSE_HELP
        )
    return parser


def _log_level(args: argparse.Namespace) -> int | None:
    """-vv: DEBUG, -v: INFO, else what ``GHL_ASYNC_LOG`` says (``None``: no logging)."""
    count = getattr(args, "verbose", 0) + getattr(args, "verbose_after", 0)
    if count >= 2:
        return logging.DEBUG
    if count == 1:
        return logging.INFO
    return _logging.level_from_env()


def _stdout_gone() -> int:
    """The reader of stdout went away: later writes (the flush at exit) go nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout replaced (tests)
        pass
    return EXIT_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        say(f"ghl-async: {exc}")
        return EXIT_USAGE
    except BrokenPipeError:  # --help | head
        return _stdout_gone()
    except SystemExit:  # --help and --version: their text may still sit in the buffer
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _stdout_gone()
        raise
    level = _log_level(args)
    if level is not None:
        _logging.enable(level, sys.stderr)
    try:
        return _run(args)
    finally:
        if level is not None:
            _logging.disable()


def _run(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        code = asyncio.run(handler(args))
        sys.stdout.flush()
        return code
    except UsageError as exc:
        say(f"ghl-async: {exc}")
        return EXIT_USAGE
    except CommandExit as exc:
        say(f"ghl-async: {exc}")
        return exc.code
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:
        on_interrupt: Callable[[argparse.Namespace], str] | None = getattr(
            args, "on_interrupt", None
        )
        if on_interrupt is not None:
            say(on_interrupt(args))
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
