"""Beside a neighbour: another spender of the same budget, as users run it (issue 10).

A neighbour (a webhook handler, a second app instance) sends a steady quarter of a
strict 25-per-second budget on the same token, from its own process; we read pages
meanwhile. Counted: the share of our requests answered 429, the neighbour's share, and
how much of what the neighbour leaves we used.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiolimiter

from ghl_async import Client

from ._alternatives import Counts, handwritten
from ._harness import FAKE_TOKEN, fake_server
from ._report import Section

BUDGET, INTERVAL = 25, 1.0
NEIGHBOUR_RATE = BUDGET / INTERVAL * 0.25


class Neighbour:
    """Sends ``rate`` requests a second on a fixed schedule, from its own process (so
    that it never waits on our event loop or interpreter lock)."""

    def __init__(self, url: str, conversation_id: str, rate: float) -> None:
        target = f"{url}/conversations/{conversation_id}/messages?limit=1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.neighbour_child", target, FAKE_TOKEN, str(rate)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.sent: list[tuple[float, bool]] = []  # (monotonic time, accepted)

    def stop(self) -> None:
        self.process.terminate()
        out, _ = self.process.communicate()
        self.sent = [(t, ok) for t, ok in json.loads(out)]

    def between(self, start: float, end: float) -> tuple[int, int]:
        """(accepted, refused) among the requests sent in ``[start, end)``."""
        inside = [ok for t, ok in self.sent if start <= t < end]
        return sum(inside), len(inside) - sum(inside)


async def _ghl_async(url: str, ids: list[str]) -> Counts:
    counts = Counts()
    async with Client(FAKE_TOKEN, base_url=url, max_concurrency=16) as client:
        async for _ in client.fan_out_pages(ids):
            counts.pages += 1
        counts.throttled = client.stats.throttled
    return counts


def measure_beside(
    runner: Any, conversations: int, *, neighbour_rate: float = NEIGHBOUR_RATE
) -> dict[str, float]:
    """One run of ``runner(url, ids)`` beside a steady neighbour; the figures."""
    with fake_server(
        conversations=conversations + 1, messages="950", rate=f"{BUDGET}/{INTERVAL:g}s"
    ) as server:
        ids = server.stats()["conversationIds"]
        neighbour = Neighbour(server.url, ids[-1], neighbour_rate)
        time.sleep(2.0)  # the neighbour is already spending when we start
        started = time.monotonic()
        counts: Counts = asyncio.run(runner(server.url, ids[:-1]))
        ended = time.monotonic()
        neighbour.stop()
    wall = ended - started
    theirs, refused = neighbour.between(started, ended)
    ours = counts.pages
    left = BUDGET / INTERVAL * wall - theirs
    return {
        "wall": wall,
        "pages": ours,
        "ours_429": counts.throttled,
        "ours_share": counts.throttled / max(1, ours + counts.throttled),
        "theirs": theirs,
        "theirs_share": refused / max(1, theirs + refused),
        "used": ours / left,
    }


def run(smoke: bool) -> Section:
    conversations = 4 if smoke else 15  # 10 pages each
    runs: dict[str, Any] = {
        "ghl_async (default settings)": _ghl_async,
        "hand-written + AsyncLimiter(25, 1)": lambda url, ids: handwritten(
            url, ids, 16, aiolimiter.AsyncLimiter(BUDGET, INTERVAL)
        ),
        "hand-written + AsyncLimiter(18, 1) (told the neighbour's share)": lambda url, ids: (
            handwritten(url, ids, 16, aiolimiter.AsyncLimiter(18, INTERVAL))
        ),
    }
    section = Section(
        title="Beside a neighbour",
        what=f"A neighbour on the same token sends {NEIGHBOUR_RATE:g} requests a second "
        f"(a quarter of a strict {BUDGET} per {INTERVAL:g} s sliding window) from its own "
        f"process, on a fixed schedule; meanwhile each client reads {conversations * 10} "
        "pages with 16 at a time. 'Used' is our rate of accepted requests over what the "
        "neighbour leaves of the budget's rate (25 a second less what it got).",
        columns=[
            "client",
            "time s",
            "our 429s",
            "share of ours answered 429",
            "neighbour's answered 429",
            "used of what the neighbour left",
        ],
    )
    for name, runner in runs.items():
        r = measure_beside(runner, conversations)
        section.rows.append(
            [
                name,
                r["wall"],
                int(r["ours_429"]),
                f"{100 * r['ours_share']:.1f}%",
                f"{100 * r['theirs_share']:.0f}%",
                f"{100 * r['used']:.0f}%",
            ]
        )
    section.notes.append(
        "Target (issue 10): ghl_async at most 1% of its requests answered 429, using at "
        "least 90% of what the neighbour leaves."
    )
    return section
