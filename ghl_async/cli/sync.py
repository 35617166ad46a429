"""``ghl-async sync``: a location kept up to date in a database or in numbered files.

Each run reads what changed since the run before (:func:`ghl_async.export.sync_location`)
and commits it with the sync's state: into SQLite (the default, ``--to sqlite:///...``),
PostgreSQL (``--to postgresql://...``), or numbered JSON Lines files (``--out DIR``).
"""

from __future__ import annotations

import argparse
import math
import re
from contextlib import AsyncExitStack
from datetime import timedelta

from ghl_async import errors
from ghl_async.cli.args import (
    ENV_BASE_URL,
    ENV_LOCATION,
    Subparsers,
    base_url_arg,
    base_url_from,
    count_arg,
    location_arg,
    location_from_env,
    rate_arg,
    read_token,
)
from ghl_async.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_OUTPUT, CommandExit, UsageError, say
from ghl_async.cli.location import email_failures
from ghl_async.cli.preflight import check_access
from ghl_async.client import DEFAULT_BASE_URL, Client
from ghl_async.export.incremental import LOOKBACK, sync_location
from ghl_async.export.numbered import NumberedFiles
from ghl_async.export.pipeline import ExportResult
from ghl_async.export.sink import Sink
from ghl_async.export.targets import describe, sink_for

__all__ = ["DEFAULT_TO", "duration_arg", "email_failures", "register", "run"]

#: Where ``sync`` writes when neither ``--to`` nor ``--out`` is given.
DEFAULT_TO = "sqlite:///messages.db"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def duration_arg(text: str) -> timedelta:
    """A duration: ``300``, ``300s``, ``5m``, ``1h`` (seconds without a unit)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration, e.g. 300s, 5m or 1h")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if not math.isfinite(seconds) or seconds > 7 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is more than a week")
    return timedelta(seconds=seconds)


def _to_arg(text: str) -> str:
    try:
        sink_for(text)
    except (ValueError, ImportError) as exc:  # ImportError: the postgres extra is missing
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(subparsers: Subparsers) -> None:
    """The ``sync`` command: a location kept up to date, run after run."""
    sync = subparsers.add_parser(
        "sync",
        help="bring a location's mirror up to date (SQLite, PostgreSQL or numbered files)",
        description="Each run reads what is new or changed since the run before and "
        "commits it with the sync's state, so a run stopped at any instant goes on "
        "where it was. --to writes a database (rows upserted by id; SQLite by "
        f"default: {DEFAULT_TO}); --out DIR writes a numbered JSON Lines file per run "
        "with something new (load them in order, upsert by id). Every change the "
        "server made visible before a run started is in after it, provided it appeared "
        "within --lookback of its dateUpdated.",
    )
    sync.add_argument(
        "--location",
        type=location_arg,
        metavar="LOCATION_ID",
        help=f"the location to sync (default: ${ENV_LOCATION})",
    )
    where = sync.add_mutually_exclusive_group()
    where.add_argument(
        "--to",
        type=_to_arg,
        metavar="URL",
        help=f"sqlite:///path.db or postgresql://... (default: {DEFAULT_TO})",
    )
    where.add_argument("--out", metavar="DIR", help="numbered JSON Lines files in DIR instead")
    sync.add_argument("--email-bodies", action="store_true", help="fetch each email's bodies too")
    sync.add_argument(
        "--lookback",
        type=duration_arg,
        default=LOOKBACK,
        help="how far before its mark each run reads again (default: 5m)",
    )
    sync.add_argument(
        "--concurrency", type=count_arg(1, 256), default=16, help="requests in flight (16)"
    )
    sync.add_argument(
        "--base-url",
        type=base_url_arg,
        help=f"the API root (default: ${ENV_BASE_URL}, else {DEFAULT_BASE_URL})",
    )
    sync.add_argument(
        "--token-file", metavar="FILE", help="read the token from this file (else from $GHL_TOKEN)"
    )
    sync.add_argument("--rate", type=rate_arg, help="cap the budget, e.g. 100/10s")
    sync.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Run ``ghl-async sync``; one summary line on stderr. Returns the exit code."""
    args.base_url = base_url_from(args.base_url, DEFAULT_BASE_URL)
    if args.location is None:
        args.location = location_from_env()
        if args.location is None:
            raise UsageError(f"name the location: --location LOCATION_ID or {ENV_LOCATION}")
    token = read_token(args.token_file)
    # One request before the sink is opened: nothing on disk for a wrong URL or token.
    await check_access(token, args.base_url, location_id=args.location)
    sink: Sink
    if args.out is not None:
        sink, where = NumberedFiles(args.out), args.out
    else:
        url = args.to or DEFAULT_TO
        sink, where = sink_for(url), describe(url)
    client = Client(
        token, base_url=args.base_url, max_concurrency=args.concurrency, rate_limit=args.rate
    )
    async with client, AsyncExitStack() as opened:
        try:
            # Opening the sink and reading its state can refuse (another sync holds the
            # directory, a state file missing, foreign or edited): usage, exit 2, before
            # any request.
            await opened.enter_async_context(sink)
            await sink.load(args.location)
        except errors.SinkError as exc:
            raise UsageError(f"cannot sync into {where}: {exc}") from None
        try:
            async with opened.pop_all():
                result = await sync_location(
                    client,
                    args.location,
                    sink,
                    email_bodies=args.email_bodies,
                    lookback=args.lookback,
                )
        except errors.SinkError as exc:
            raise CommandExit(EXIT_OUTPUT, f"sync into {where} stopped: {exc}") from None
        except ValueError as exc:  # the sink holds another kind of export of the location
            raise UsageError(str(exc)) from None
        except errors.LocationExportUnavailable as exc:
            raise UsageError(f"{exc.message}; sync needs the location export") from None
        except errors.AuthenticationError as exc:
            raise UsageError(f"the token was refused ({exc.message}); check GHL_TOKEN") from None
        except errors.GHLError as exc:
            say(
                f"ghl-async: sync of location {args.location} stopped ({exc}); what was "
                f"committed stands: run it again to continue"
            )
            return EXIT_FAILED
        requests = client.stats.requests
    say(_summary(result, where, requests, sink))
    return EXIT_FAILED if result.failed_emails else EXIT_OK


def _summary(result: ExportResult, where: str, requests: int, sink: Sink) -> str:
    resumed = ", resumed" if result.resumed else ""
    if not result.messages:
        return (
            f"sync: nothing new in {where} ({requests} requests{resumed}){email_failures(result)}"
        )
    emails = f" and {result.emails} email bodies" if result.emails else ""
    into = where
    if isinstance(sink, NumberedFiles) and sink.last_file is not None:
        into = sink.last_file
    return (
        f"sync: {result.messages} new or changed messages{emails} into {into} "
        f"({requests} requests{resumed}){email_failures(result)}"
    )
