"""A whole location: fan-out (pages of 100) against the location export (pages of 500).

Requests are counted by the fake per route; the time under HighLevel's budget of 100
requests per 10 s is computed from them (a strict window: ``(requests - 1) // 100``
full windows), not waited out. Then 1% of the conversations get a new message and one
edit each, and the incremental runs are counted: ``ghl-async sync`` (the export sorted
by ``updatedAt`` from each pass's mark less the lookback) and search + fan-out with ``since``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import datetime, timezone

from ghl_async import Client, RateLimit
from ghl_async.export import NumberedFiles, sync_location
from ghl_async.testing import FakeHighLevel

from ._report import Section

BUDGET, INTERVAL = 100, 10.0
ROOMY = RateLimit(10**9, 1.0)  # the fake never throttles: requests are counted, not waited


def budget_seconds(requests: int) -> float:
    """How long ``requests`` take at best under 100 per 10 s (a strict sliding window)."""
    return ((requests - 1) // BUDGET) * INTERVAL if requests else 0.0


async def _measure(conversations: int) -> Section:
    async with FakeHighLevel(
        conversations=conversations, messages=(50, 150), seed=13, rate_limit=ROOMY
    ) as fake:
        total = fake.total_messages
        results: list[tuple[str, int, float | None, int]] = []
        async with Client(fake.token, base_url=fake.url, max_concurrency=16) as client:
            before = dict(fake.stats.by_route)
            started = time.perf_counter()
            ids = [c.id async for c in client.iter_conversations(fake.location_id)]
            got = sum([1 async for _ in client.fan_out(ids, page_size=100)])
            fan_wall = time.perf_counter() - started
            fan_requests = sum(fake.stats.by_route.values()) - sum(before.values())
            assert got == total, (got, total)
            results.append(("search + fan-out, pages of 100", fan_requests, fan_wall, got))

            before = dict(fake.stats.by_route)
            started = time.perf_counter()
            got = sum([1 async for _ in client.iter_location_messages(fake.location_id)])
            export_wall = time.perf_counter() - started
            export_requests = sum(fake.stats.by_route.values()) - sum(before.values())
            assert got == total, (got, total)
            results.append(("location export, pages of 500", export_requests, export_wall, got))

            with tempfile.TemporaryDirectory() as folder:
                sink = NumberedFiles(folder)
                async with sink:  # the first run: everything
                    await sync_location(client, fake.location_id, sink)
                now = datetime.now(timezone.utc)  # cut to the ms: the fake's precision
                since = now.replace(microsecond=now.microsecond // 1000 * 1000)
                changed = fake.conversation_ids[: max(1, conversations // 100)]
                for conversation_id in changed:
                    fake.add_message(conversation_id)
                    fake.update_message(fake.messages(conversation_id)[-1]["id"], status="read")
                requests_before = client.stats.requests
                async with NumberedFiles(folder) as sink:
                    incremental = await sync_location(client, fake.location_id, sink)
                assert incremental.messages == 2 * len(changed), incremental
                results.append(
                    (
                        f"incremental sync after {len(changed)} conversations changed",
                        client.stats.requests - requests_before,
                        None,
                        incremental.messages,
                    )
                )

            before = dict(fake.stats.by_route)
            touched = [
                c.id async for c in client.iter_conversations(fake.location_id, since=since)
            ]
            got = sum([1 async for _ in client.fan_out(touched, since=since)])
            fan_since = sum(fake.stats.by_route.values()) - sum(before.values())
            results.append(
                (
                    "incremental search + fan-out with since (new messages only)",
                    fan_since,
                    None,
                    got,
                )
            )

    section = Section(
        title="A whole location: fan-out against the location export",
        what=f"One location of {conversations:,} conversations and {total:,} messages "
        f"(50 to 150 each), in-process fake, 16 requests in flight. 'time under budget' "
        f"is computed from the requests at {BUDGET} per {INTERVAL:g} s; 'wall s' is the "
        "measured time with the budget lifted (CPU and socket only).",
        columns=[
            "run",
            "requests",
            "time under budget s",
            "wall s",
            "messages",
            "messages per request",
        ],
    )
    for name, requests, wall, messages in results:
        section.rows.append(
            [
                name,
                requests,
                budget_seconds(requests),
                "" if wall is None else wall,
                messages,
                messages / requests if requests else 0.0,
            ]
        )
    ratio = fan_requests / export_requests
    share = 100 * results[2][1] / export_requests
    section.notes.append(
        f"The location export used {ratio:.1f}x fewer requests than the fan-out (target: "
        f"at least 4.5x); the incremental sync cost {share:.2f}% of the full export's "
        "requests (target: under 2%)."
    )
    return section


def run(smoke: bool) -> Section:
    """The table; ``smoke``: 100 conversations (seconds) instead of 2,000."""
    return asyncio.run(_measure(100 if smoke else 2_000))


if __name__ == "__main__":
    import sys

    print(run("--smoke" in sys.argv).markdown())
