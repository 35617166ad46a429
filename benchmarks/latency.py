"""Latency-bound fan-out: a distant server (50 ms a reply), 64 requests in flight."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from ._alternatives import ghl_async_pages, handwritten, workers
from ._harness import fake_server, measure, median
from ._report import Section


def run(smoke: bool) -> Section:
    conversations, rounds = (64, 1) if smoke else (1000, 3)
    latency, concurrency = 0.05, 64
    pages = conversations * 3  # 250 messages: 100 + 100 + 50
    ideal = pages * latency / concurrency
    with fake_server(
        conversations=conversations, messages="250", faults=f"latency={latency}"
    ) as server:
        url = server.url
        ids = server.stats()["conversationIds"]
        runs: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "ghl_async": lambda: ghl_async_pages(url, ids, concurrency),
            "floor: 64 workers, aiohttp + msgspec": lambda: workers(url, ids, concurrency),
            "hand-written aiohttp + json": lambda: handwritten(url, ids, concurrency),
        }
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):  # alternate, so drift hits every alternative alike
            for name, runner in runs.items():
                samples[name].append(measure(runner)[0])
    section = Section(
        title="Latency-bound fan-out",
        what=f"{conversations} conversations x 3 pages, {latency * 1000:.0f} ms per reply, "
        f"{concurrency} in flight. Ideal: pages x latency / concurrency = {ideal:.2f} s.",
        columns=["client", "wall s", "% of ideal", "wall vs worker floor"],
    )
    floor = median(samples["floor: 64 workers, aiohttp + msgspec"])
    for name, walls in samples.items():
        wall = median(walls)
        section.rows.append([name, wall, f"{100 * ideal / wall:.0f}%", f"{wall / floor:.2f}x"])
    # A conversation's pages come one after another (each needs the previous cursor).
    rounds_needed = -(-conversations // concurrency)
    sequential = rounds_needed * 3 * latency
    ours = median(samples["ghl_async"])
    section.notes.append(
        f"Pages of one conversation are sequential, so {concurrency} in flight need at least "
        f"{rounds_needed} rounds x 3 pages x {latency * 1000:.0f} ms = {sequential:.2f} s: "
        f"ghl_async reaches {100 * sequential / ours:.0f}% of that bound."
    )
    section.notes.append(
        "Target (issue 12): ghl_async at least 92% of ideal. Its first request goes alone "
        "until a reply says what the budget is: one round trip per process."
    )
    return section
