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
import contextlib
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from functools import partial

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
    resets_when,
    say,
)
from ghl_async.cli.preflight import check_access
from ghl_async.cli.progress import Progress, budget_of, location_table
from ghl_async.client import Client
from ghl_async.export.files import ExportRefused, check_new_output
from ghl_async.export.jsonl import JsonlSink
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.sink import Sink

__all__ = [
    "FALLBACK_SAID",
    "add_export_flags",
    "channel_arg",
    "date_arg",
    "dates_problem",
    "email_failures",
    "export_to_file",
    "location_flags_problem",
    "output_gone",
    "remove_if_empty",
    "run_pipeline",
    "without_resume",
]

#: What stderr says when the location export is refused and the fallback takes over.
FALLBACK_SAID = (
    "ghl-async: the location export was refused (the token lacks its scope or the plan "
    "has no such endpoint); falling back to conversation search + fan-out"
)


def date_arg(text: str) -> datetime:
    """An ISO 8601 date or date-time, in UTC (without an offset it is UTC already).

    An instant that has no UTC date-time (``9999-12-31T23:59:59-01:00`` is in year
    10000) is refused here, in one line, rather than deep in a request.
    """
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date, e.g. 2025-06-01 or 2025-06-01T12:00:00Z"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    try:
        return when.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is outside the dates UTC can hold (years 1 to 9999)"
        ) from None


def dates_problem(args: argparse.Namespace) -> str | None:
    """``--since`` after ``--until``, said in one line; else ``None``."""
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if since is not None and until is not None and since > until:
        return f"--since ({since.isoformat()}) is after --until ({until.isoformat()})"
    return None


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


def email_failures(result: ExportResult, again: str = "the next run") -> str:
    """The summary's words on email bodies still missing ('' when none)."""
    failed = result.failed_emails
    if not failed:
        return ""
    email_id, first = next(iter(failed.items()))
    retry = sum(f.retry for f in failed.values())
    return (
        f"; {len(failed)} email bodies could not be fetched (first {email_id}: "
        f"{first.reason}); {retry} will be fetched again by {again}"
    )


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
    check: Callable[[], Awaitable[None]] | None = None,
    check_first: bool = True,
) -> ExportResult:
    """Export ``args.location`` into ``sink``; every error becomes a one-line exit.

    The sink is opened and asked for the location's state before any request, so what
    it refuses costs nothing (exit ``refused_code``; a sink failing later exits 3).
    ``sink_error`` comes before the sink's message (``"cannot write DB: "``). ``again``
    says how to go on after a stop (``"run the same command with --resume"``),
    ``restart`` how to start over when the state is of other arguments. The fallback is
    announced once on stderr (not again by a run resuming one). A token refused outright
    is left to the command (:class:`ghl_async.errors.AuthenticationError`).

    ``check`` asks the server once (:func:`ghl_async.cli.preflight.check_access`): before
    the sink is opened when ``check_first`` (the output does not exist yet: nothing is
    created for a wrong URL or token), else after the sink said what it holds (an
    existing output's own refusals come first, and opening it creates nothing).
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

    if check is not None and check_first:
        await check()
    try:
        async with sink:
            state = await sink.load(args.location)
            if check is not None and not check_first:
                await check()
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
        when = resets_when(exc.resets_at)
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


async def export_to_file(client: Client, args: argparse.Namespace, token: str) -> int:
    """``export --location ID --out FILE``: the location into JSON Lines, a summary table.

    ``--resume`` goes on from the file's checkpoint, ``--force`` starts over; without
    either, a file that is not empty is refused. ``--out -`` writes to stdout (no
    checkpoint, so no ``--resume``).
    """
    out = args.out
    existed = True
    try:
        stream = out == "-" or not stat.S_ISREG(os.stat(out).st_mode)
    except FileNotFoundError:
        stream, existed = False, False  # created by this run: removed if left empty
    except OSError:
        stream = False  # unreadable: the sink says so
    if args.resume and stream:
        raise UsageError(
            "--resume needs an output file, not stdout"
            if out == "-"
            else f"--resume needs a regular output file; {out} is not one"
        )
    if not existed:
        try:
            check_new_output(out)
        except ExportRefused as exc:
            raise UsageError(str(exc)) from None
    sink = JsonlSink(out, mode="resume" if args.resume else "force" if args.force else "new")
    enabled = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(enabled, None, client, sys.stderr, unit="page")
    again = "run the same command again" if stream else "run the same command with --resume"
    started = time.monotonic()
    try:
        async with progress.ticking():
            result = await run_pipeline(
                client,
                args,
                sink,
                where=out,
                refused_code=EXIT_USAGE,
                again=again,
                restart="repeat that command's options with --resume, or start over with --force",
                on_batch=progress.update_pages,
                check=partial(check_access, token, args.base_url, location_id=args.location),
                # --force empties the file on opening: a wrong URL must not cost it.
                check_first=not existed or stream or args.force,
            )
    except CommandExit as exc:
        progress.close()
        if not existed and remove_if_empty(out):
            # Nothing was written: nothing to resume, and nothing left on disk.
            raise CommandExit(exc.code, without_resume(str(exc))) from None
        raise
    except BaseException:
        progress.close()
        if not existed:
            remove_if_empty(out)
        raise
    progress.close()
    elapsed = time.monotonic() - started
    nothing = result.resumed and not (result.pages or result.messages or result.failed_emails)
    if nothing and not stream:
        say(f"export: {out} already holds the whole location; nothing to do")
        return EXIT_OK
    say(
        "export finished\n"
        + location_table(result, elapsed, client, budget_of(client), {"output": out})
    )
    missing = email_failures(result, "the same command with --resume")
    if missing:
        say(f"ghl-async: {missing.removeprefix('; ')}")
        return EXIT_FAILED
    return EXIT_OK


def remove_if_empty(out: str) -> bool:
    """Remove ``out`` and its checkpoint if no line was written; whether it did."""
    try:
        if os.path.getsize(out):
            return False
        os.unlink(out)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        os.unlink(out + ".checkpoint")
    return True


def without_resume(message: str) -> str:
    """A stop's message once nothing was kept: no advice to resume what does not exist."""
    for cut in ("; what was committed stands", "; run the same command", ". Resume then"):
        if cut in message:
            message = message[: message.index(cut)]
    return f"{message}; nothing was written"
