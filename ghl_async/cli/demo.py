"""``ghl-async demo``: an export from an in-process fake HighLevel, then a SQLite mirror.

:mod:`ghl_async.testing` is imported when the command runs, not when the command line
starts: it loads aiohttp's server, which no other command needs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import tempfile
from typing import Any

from ghl_async.cli.args import Subparsers, count_arg, rate_arg
from ghl_async.cli.exits import EXIT_FAILED, EXIT_OK, say
from ghl_async.cli.progress import export_with_progress, summary_table
from ghl_async.client import Client
from ghl_async.export.pipeline import export_location
from ghl_async.export.sqlite import SQLiteSink
from ghl_async.ratelimit import RateLimit
from ghl_async.retry import RetryPolicy

__all__ = ["register", "run"]


def register(subparsers: Subparsers) -> None:
    """The ``demo`` command."""
    demo = subparsers.add_parser("demo", help="export from an in-process fake server")
    demo.add_argument(
        "--conversations", type=count_arg(1, 100_000), default=300, help="how many (300)"
    )
    demo.add_argument("--seed", type=int, default=7, help="the fake data's seed")
    demo.add_argument(
        "--rate", type=rate_arg, default=RateLimit(50, 2.0), help="the fake's budget (50/2s)"
    )
    demo.add_argument(
        "--progress", action="store_true", default=None, help="show progress when piped"
    )
    demo.set_defaults(handler=run)


async def _mirror(client: Client, location_id: str, folder: str) -> tuple[int, list[Any]]:
    """Mirror the location into a SQLite file in ``folder``; its row count, rows per type."""
    path = os.path.join(folder, "messages.db")
    async with SQLiteSink(path) as sink:
        await export_location(client, location_id, sink)
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        per_type = db.execute(
            "SELECT message_type, count(*) FROM messages GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
    return int(rows), per_type


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


async def run(args: argparse.Namespace) -> int:
    """Run ``ghl-async demo``: exit 0 when every message came within the budget."""
    from ghl_async.testing import FakeHighLevel, Faults

    budget = args.rate
    say(
        f"Starting a fake HighLevel with {args.conversations} conversations and a budget of "
        f"{budget.max_requests} requests per {budget.interval:g} s (a few faults injected)..."
    )
    faults = Faults(server_error=0.02, reset=0.01, truncate=0.01, html=0.01)
    async with FakeHighLevel(
        conversations=args.conversations, seed=args.seed, rate_limit=budget, faults=faults
    ) as fake:
        retry = RetryPolicy(backoff_base=0.05, backoff_cap=0.5)
        async with Client(fake.token, base_url=fake.url, retry=retry) as client:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "messages.jsonl")
                summary = await export_with_progress(
                    client,
                    fake.conversation_ids,
                    total=len(fake.conversation_ids),
                    show=args.progress,
                    out=out,
                )
                lines = _count_lines(out)
                mirrored, per_type = await _mirror(client, fake.location_id, tmp)
        extra = {
            "lines written": f"{lines} (server holds {fake.total_messages})",
            "most requests in any window": f"{fake.stats.max_in_window} "
            f"(budget {budget.max_requests})",
            "server 429s": f"{fake.stats.throttled}",
            "faults injected": ", ".join(f"{k} {v}" for k, v in sorted(fake.stats.faults.items()))
            or "none",
        }
        say("demo finished\n" + summary_table(summary, client, budget, extra))
        say(
            f"\nThe same location mirrored into SQLite (ghl-async export --location "
            f"{fake.location_id} --to sqlite:///messages.db): {mirrored} rows.\n"
            "SELECT message_type, count(*) FROM messages GROUP BY 1 ORDER BY 2 DESC;\n"
            + "\n".join(f"  {kind or '(none)':<26} {count:>7}" for kind, count in per_type)
        )
    ok = (
        lines == fake.total_messages == mirrored
        and fake.stats.max_in_window <= budget.max_requests
    )
    return EXIT_OK if ok and not summary.failed else EXIT_FAILED
