"""``ghl-async sync``: a location's new or changed messages, each run to a numbered file."""

from __future__ import annotations

import argparse

from ghl_async import errors
from ghl_async.cli.args import (
    Subparsers,
    base_url_arg,
    count_arg,
    location_arg,
    rate_arg,
    read_token,
)
from ghl_async.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_OUTPUT, UsageError, say
from ghl_async.client import DEFAULT_BASE_URL, Client
from ghl_async.export.sync import SyncRefused, run_sync

__all__ = ["register", "run"]


def register(subparsers: Subparsers) -> None:
    """The ``sync`` command: a location's messages, incrementally, into a directory."""
    sync = subparsers.add_parser(
        "sync",
        help="write a location's new or changed messages to a numbered file",
        description="The first run writes every message of the location to "
        "DIR/messages-000001.jsonl; each later run writes only what is new or changed "
        "since the run before (a message edited comes again, whole) to the next "
        "number. Load the files in order and upsert by id. A run with nothing new "
        "writes nothing.",
    )
    sync.add_argument(
        "--location",
        type=location_arg,
        required=True,
        metavar="LOCATION_ID",
        help="the location to sync",
    )
    sync.add_argument(
        "--out", required=True, metavar="DIR", help="the directory of numbered files and state"
    )
    sync.add_argument(
        "--email-bodies", action="store_true", help="fetch each email's bodies into 'emails'"
    )
    sync.add_argument(
        "--concurrency", type=count_arg(1, 256), default=16, help="requests in flight (16)"
    )
    sync.add_argument(
        "--base-url", type=base_url_arg, default=DEFAULT_BASE_URL, help="the API root"
    )
    sync.add_argument("--token-file", metavar="FILE", help="read the token from this file")
    sync.add_argument("--rate", type=rate_arg, help="cap the budget, e.g. 100/10s")
    sync.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Run ``ghl-async sync``; one summary line on stderr. Returns the exit code."""
    token = read_token(args.token_file)
    client = Client(
        token, base_url=args.base_url, max_concurrency=args.concurrency, rate_limit=args.rate
    )
    async with client:
        try:
            summary = await run_sync(
                client, args.location, args.out, email_bodies=args.email_bodies
            )
        except SyncRefused as exc:
            raise UsageError(str(exc)) from None
        except errors.LocationExportUnavailable as exc:
            raise UsageError(f"{exc.message}; sync needs the location export") from None
        except errors.AuthenticationError as exc:
            raise UsageError(f"the token was refused ({exc.message}); check GHL_TOKEN") from None
        except errors.GHLError as exc:
            say(f"ghl-async: sync run failed ({exc}); nothing of it was kept, run it again")
            return EXIT_FAILED
        except OSError as exc:
            say(f"ghl-async: cannot write {args.out}: {exc.strerror or exc}; run it again")
            return EXIT_OUTPUT
    if summary.file is None:
        say(f"sync: nothing new ({summary.requests} requests)")
    else:
        say(
            f"sync: run {summary.run} wrote {summary.messages} new or changed messages to "
            f"{summary.file} ({summary.requests} requests)"
        )
    return EXIT_OK
