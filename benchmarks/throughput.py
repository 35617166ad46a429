"""Unthrottled throughput: many conversations, pages of 100, 16 in flight."""

from __future__ import annotations

from ._alternatives import ghl_async_messages, ghl_async_pages, handwritten, official_sdk
from ._harness import fake_server, measure, median, sdk_available
from ._report import Section


def run(smoke: bool) -> Section:
    conversations, messages, rounds = (10, "300", 1) if smoke else (100, "1000", 5)
    concurrency = 16
    with fake_server(conversations=conversations, messages=messages) as server:
        url = server.url
        ids = server.stats()["conversationIds"]
        total = server.stats()["totalMessages"]
        runs = {
            "ghl_async fan_out_pages": lambda: ghl_async_pages(url, ids, concurrency),
            "ghl_async fan_out": lambda: ghl_async_messages(url, ids, concurrency),
            "hand-written aiohttp + json": lambda: handwritten(url, ids, concurrency),
            "floor: bare aiohttp + msgspec decode": lambda: handwritten(
                url, ids, concurrency, typed=True
            ),
        }
        if sdk_available():
            runs["official SDK (httpx)"] = lambda: official_sdk(url, ids, concurrency)
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
        for _ in range(rounds):  # alternate, so drift hits every alternative alike
            for name, runner in runs.items():
                wall, cpu, result = measure(runner)
                pages = result if isinstance(result, int) else result.pages
                if name == "ghl_async fan_out":
                    pages = len(ids) * (int(messages) // 100 + 1)
                samples[name].append((wall, cpu, pages))
    section = Section(
        title="Throughput, unthrottled",
        what=f"{conversations} conversations x {messages} messages, pages of 100 "
        f"({conversations * (int(messages) // 100 + 1)} requests), {concurrency} in flight, "
        f"the fake server in its own process; median of {rounds} alternating rounds.",
        columns=[
            "client",
            "wall s",
            "client CPU ms / 1,000 pages",
            "messages/s",
            "CPU vs hand-written",
            "wall vs official SDK",
        ],
    )
    cpu_per = {n: median([c / p * 1000 * 1000 for _, c, p in s]) for n, s in samples.items()}
    walls = {n: median([w for w, _, _ in s]) for n, s in samples.items()}
    base_cpu = cpu_per["hand-written aiohttp + json"]
    sdk_wall = walls.get("official SDK (httpx)")
    for name in runs:
        section.rows.append(
            [
                name,
                walls[name],
                cpu_per[name],
                total / walls[name],
                f"{base_cpu / cpu_per[name]:.2f}x",
                f"{sdk_wall / walls[name]:.1f}x" if sdk_wall else "n/a",
            ]
        )
    per_page = cpu_per["ghl_async fan_out_pages"] / 1000
    floor = cpu_per["floor: bare aiohttp + msgspec decode"] / 1000
    section.notes.append(
        f"ghl_async client CPU per 100-message page: {per_page:.3f} ms, against a floor of "
        f"{floor:.3f} ms for aiohttp's transport plus a typed msgspec decode with no limiter, "
        f"retries or validation ({100 * (per_page / floor - 1):.0f}% over it)."
    )
    section.notes.append(
        "Floors (issue 5): CPU at least 1.3x better than the hand-written "
        "loop; wall time at least 5x better than the official SDK."
    )
    section.chart = (
        "throughput_cpu.png",
        "client CPU ms per 1,000 pages (lower is better)",
        list(runs),
        [cpu_per[n] for n in runs],
    )
    return section
