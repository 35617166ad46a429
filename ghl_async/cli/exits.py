"""How a command ends: the exit codes, the one-line errors that carry them, ``say``.

Every error ends in one line on stderr (``ghl-async: ...``), never a traceback.

Exit codes:
    0    done.
    1    some conversations failed (their ids are in ``OUT.failed``), some email bodies
         could not be fetched (recorded with their messages; the next run fetches
         them again), the daily budget ran out, or listing a location failed part
         way; ``--resume`` (or running the command again) continues.
    2    bad usage, nothing written: a bad flag or id, a refused token, an unknown
         location, an output that cannot be opened, exists (``--force``), is locked by
         another export, or does not match its checkpoint on ``--resume``; a busy port.
    3    the output could not be written part way (a full disk, an I/O error);
         everything before the error is kept and ``--resume`` continues.
    130  interrupted (Ctrl-C); ``--resume`` continues.
    141  the reader of ``--out -`` went away (``| head``), as for SIGPIPE.
"""

from __future__ import annotations

import datetime as dt
import sys

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "CommandExit",
    "UsageError",
    "resets_when",
    "say",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUTPUT = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141


class UsageError(Exception):
    """A problem with how the command was called (exit code 2), in one line."""


class CommandExit(Exception):
    """Stop with this exit code after saying ``message`` (one line)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def say(text: str) -> None:
    """One line (or a few) on stderr, flushed at once."""
    print(text, file=sys.stderr, flush=True)


def resets_when(resets_at: float | None) -> str:
    """When a spent daily budget comes back, in local time, for a one-line message."""
    if not resets_at:
        return "at the start of the next day"
    return dt.datetime.fromtimestamp(resets_at).astimezone().isoformat(timespec="minutes")
