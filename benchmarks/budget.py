"""Under a real budget: a strict sliding window of 25 requests per second."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import aiolimiter

from ._alternatives import Counts, ghl_async_pages, handwritten, official_sdk
from ._harness import fake_server, measure, median, sdk_available
from ._report import Section

BUDGET, INTERVAL = 25, 1.0

# A client of the comparison: ``factory(url, ids)`` is one run, to await.
RunnerFactory = Callable[[str, list[str]], Coroutine[Any, Any, object]]


def run(smoke: bool) -> Section:
    # 950 messages = 10 requests per conversation at 100 a page.
    conversations, rounds = (5, 1) if smoke else (30, 2)
    requests = conversations * 10
    ideal = ((requests - 1) // BUDGET) * INTERVAL
    results: dict[str, list[tuple[float, int, int, str]]] = {}

    def one(name: str, runner_factory: RunnerFactory) -> None:
        with fake_server(
            conversations=conversations, messages="950", rate=f"{BUDGET}/{INTERVAL:g}s"
        ) as server:
            ids = server.stats()["conversationIds"]
            wall, _, result = measure(lambda: runner_factory(server.url, ids))
            stats = server.stats()
        failed = result.failed if isinstance(result, Counts) and result.failed else ""
        results.setdefault(name, []).append(
            (wall, stats["throttled"], stats["maxInWindow"], failed)
        )

    runs: dict[str, RunnerFactory] = {
        "ghl_async": lambda url, ids: ghl_async_pages(url, ids, 16),
        "hand-written + AsyncLimiter(25, 1)": lambda url, ids: handwritten(
            url, ids, 16, aiolimiter.AsyncLimiter(BUDGET, INTERVAL)
        ),
    }
    if sdk_available():
        runs["official SDK (no limiter)"] = lambda url, ids: official_sdk(url, ids, 16)
    for _ in range(rounds):
        for name, factory in runs.items():
            one(name, factory)
    section = Section(
        title="Under a real budget",
        what=f"{requests} pages against a server that allows {BUDGET} requests in any "
        f"{INTERVAL:g} s (sliding window, counted strictly). The fastest the window allows: "
        f"{ideal:.0f} s. Median of {rounds} rounds.",
        columns=["client", "time s", "% of ideal", "429s", "most in any window", "outcome"],
    )
    labels, throttled = [], []
    for name, samples in results.items():
        wall = median([s[0] for s in samples])
        failed = samples[-1][3]
        section.rows.append(
            [
                name,
                wall,
                "n/a (stopped)" if failed else f"{100 * ideal / wall:.1f}%",
                max(s[1] for s in samples),
                max(s[2] for s in samples),
                failed or "all pages",
            ]
        )
        labels.append(f"{name}\n(stopped: {failed})" if failed else name)
        throttled.append(float(max(s[1] for s in samples)))
    section.notes.append("Floor (issues 3 and 5): ghl_async at least 95% of ideal, zero 429s.")
    section.chart = (
        "budget.png",
        f"429s while reading {requests} pages (lower is better)",
        labels,
        throttled,
    )
    return section
