"""``ghl-async demo``: an export from an in-process fake HighLevel, with its summary.

:mod:`ghl_async.testing` is imported when the command runs, not when the command line
starts: it loads aiohttp's server, which no other command needs.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from ghl_async.cli.args import Subparsers, count_arg, rate_arg
from ghl_async.cli.exits import EXIT_FAILED, EXIT_OK, say
from ghl_async.cli.progress import export_with_progress, summary_table
from ghl_async.client import Client
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
        extra = {
            "lines written": f"{lines} (server holds {fake.total_messages})",
            "most requests in any window": f"{fake.stats.max_in_window} "
            f"(budget {budget.max_requests})",
            "server 429s": f"{fake.stats.throttled}",
            "faults injected": ", ".join(f"{k} {v}" for k, v in sorted(fake.stats.faults.items()))
            or "none",
        }
        say("demo finished\n" + summary_table(summary, client, budget, extra))
    ok = lines == fake.total_messages and fake.stats.max_in_window <= budget.max_requests
    return EXIT_OK if ok and not summary.failed else EXIT_FAILED
