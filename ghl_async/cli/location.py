"""``ghl-async export --location``: a whole location through the export pipeline.

``--out FILE`` and ``--to URL`` run one code path, :func:`run_pipeline`: the library's
:func:`ghl_async.export.pipeline.export_location` into a sink (a
:class:`~ghl_async.export.JsonlSink` for ``--out``, the database a ``--to`` URL names),
every page committed with the export's state. A ``--resume`` after ``kill -9`` goes on
from the last commit, with every message exactly once. Where the token or the plan lacks
the location export, the pipeline falls back to conversation search plus fan-out (said
once on stderr) and records it in the state, so a resumed fallback stays one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from ghl_async import errors
from ghl_async._params import CHANNELS
from ghl_async.cli.args import location_arg
from ghl_async.cli.exits import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_PIPE,
    EXIT_USAGE,
    CommandExit,
    UsageError,
    say,
)
from ghl_async.cli.progress import Progress, budget_of, location_table
from ghl_async.client import Client
from ghl_async.export.jsonl import JsonlSink
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.sink import Sink

__all__ = [
    "FALLBACK_SAID",
    "add_export_flags",
    "channel_arg",
    "date_arg",
    "export_to_file",
    "location_flags_problem",
    "output_gone",
    "run_pipeline",
]

#: What stderr says when the location export is refused and the fallback takes over.
FALLBACK_SAID = (
    "ghl-async: the location export was refused (the token lacks its scope or the plan "
    "has no such endpoint); falling back to conversation search + fan-out"
)


def date_arg(text: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date, e.g. 2025-06-01 or 2025-06-01T12:00:00Z"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def channel_arg(text: str) -> str:
    """A channel of the location export, any case: sms, Email, whatsapp..."""
    for name in CHANNELS:
        if name.lower() == text.strip().lower():
            return name
    raise argparse.ArgumentTypeError(f"{text!r} is not a channel; valid: {', '.join(CHANNELS)}")


def add_export_flags(export: argparse.ArgumentParser) -> None:
    """The location export's flags on ``ghl-async export``."""
    export.add_argument(
        "--contact", type=location_arg, metavar="CONTACT_ID", help="only this contact's messages"
    )
    export.add_argument("--channel", type=channel_arg, help=f"only one of {', '.join(CHANNELS)}")
    export.add_argument(
        "--since", type=date_arg, help="only messages created at or after (ISO 8601, UTC default)"
    )
    export.add_argument("--until", type=date_arg, help="only messages created at or before")
    export.add_argument(
        "--email-bodies", action="store_true", help="fetch each email's bodies into 'emails'"
    )


def location_flags_problem(args: argparse.Namespace) -> str | None:
    """Why the location flags cannot go with the rest of the command, or ``None``."""
    if args.location:
        if args.types:
            return "--types filters a conversation export; with --location use --channel"
        return None
    for flag in ("contact", "channel", "until"):
        if getattr(args, flag) is not None:
            return f"--{flag} needs --location (it filters the location export)"
    return None


def output_gone() -> CommandExit:
    """The reader of ``--out -`` went away (``| head``): exit 141, in one line."""
    # Later writes to the closed pipe (Python's flush at exit) would print again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout replaced (tests)
        pass
    return CommandExit(EXIT_PIPE, "the reader of the output went away; export stopped")


async def run_pipeline(
    client: Client,
    args: argparse.Namespace,
    sink: Sink,
    *,
    where: str,
    refused_code: int,
    again: str,
    restart: str,
    sink_error: str = "",
    on_batch: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Export ``args.location`` into ``sink``; every error becomes a one-line exit.

    The sink is opened and asked for the location's state before any request, so what
    it refuses costs nothing (exit ``refused_code``; a sink failing later exits 3).
    ``sink_error`` comes before the sink's message (``"cannot write DB: "``). ``again``
    says how to go on after a stop (``"run the same command with --resume"``),
    ``restart`` how to start over when the state is of other arguments. The fallback is
    announced once on stderr (not again by a run resuming one). A token refused outright
    is left to the command (:class:`ghl_async.errors.AuthenticationError`).
    """
    opened = False
    announced = False

    def batch_done(result: ExportResult) -> None:
        nonlocal announced
        if result.fallback and not announced:
            announced = True
            say(FALLBACK_SAID)
        if on_batch is not None:
            on_batch(result)

    try:
        async with sink:
            state = await sink.load(args.location)
            opened = True
            announced = state is not None and state.fallback
            result = await export_location(
                client,
                args.location,
                sink,
                since=args.since,
                until=args.until,
                channel=args.channel,
                contact_id=args.contact,
                email_bodies=args.email_bodies,
                on_batch=batch_done,
            )
    except errors.SinkError as exc:
        if isinstance(exc.__cause__, BrokenPipeError):
            raise output_gone() from None
        if not opened:
            raise CommandExit(refused_code, f"{sink_error}{exc}") from None
        raise CommandExit(
            EXIT_OUTPUT, f"{sink_error}{exc}; what was committed stands: {again}"
        ) from None
    except ValueError as exc:  # a state left by other arguments
        text = str(exc).replace("into this sink", f"into {where}")
        raise UsageError(text.replace("pass resume=False to start again", restart)) from None
    except errors.AuthenticationError:
        raise  # the command's own one line: the token was refused
    except errors.DailyLimitExceeded as exc:
        when = (
            dt.datetime.fromtimestamp(exc.resets_at).astimezone().isoformat(timespec="minutes")
            if exc.resets_at
            else "at the start of the next day"
        )
        raise CommandExit(
            EXIT_FAILED,
            f"the daily request budget is spent; it resets {when}; what was committed "
            f"stands: {again} then",
        ) from None
    except (errors.PermissionDeniedError, errors.NotFoundError) as exc:
        # The route's own refusal is the fallback; these are the search's.
        raise CommandExit(
            EXIT_USAGE, f"cannot list location {args.location}: {exc.message}"
        ) from None
    except errors.GHLError as exc:
        raise CommandExit(
            EXIT_FAILED,
            f"export of location {args.location} stopped ({exc}); what was committed "
            f"stands: {again} to continue",
        ) from None
    if result.fallback and not announced:
        say(FALLBACK_SAID)
    return result


async def export_to_file(client: Client, args: argparse.Namespace) -> int:
    """``export --location ID --out FILE``: the location into JSON Lines, a summary table.

    ``--resume`` goes on from the file's checkpoint, ``--force`` starts over; without
    either, a file that is not empty is refused. ``--out -`` writes to stdout (no
    checkpoint, so no ``--resume``).
    """
    out = args.out
    try:
        stream = out == "-" or not stat.S_ISREG(os.stat(out).st_mode)
    except OSError:
        stream = False  # missing: created; unreadable: the sink says so
    if args.resume and stream:
        raise UsageError(
            "--resume needs an output file, not stdout"
            if out == "-"
            else f"--resume needs a regular output file; {out} is not one"
        )
    sink = JsonlSink(out, mode="resume" if args.resume else "force" if args.force else "new")
    enabled = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(enabled, None, client, sys.stderr, unit="page")
    started = time.monotonic()
    try:
        result = await run_pipeline(
            client,
            args,
            sink,
            where=out,
            refused_code=EXIT_USAGE,
            again="run the same command again" if stream else "run the same command with --resume",
            restart="repeat that command's options with --resume, or start over with --force",
            on_batch=progress.update_pages,
        )
    finally:
        progress.close()
    elapsed = time.monotonic() - started
    say(
        "export finished\n"
        + location_table(result, elapsed, client, budget_of(client), {"output": out})
    )
    return EXIT_OK
