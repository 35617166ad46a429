"""The limiter beside others (issue 10): a cap that holds, the budget learnt at once.

Each row is one setup from the issue, against the strict sliding-window fake server in
its own process. "Ideal" is the fastest the server's window allows:
``((requests - 1) // max) * interval``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ghl_async import RateLimit

from ._alternatives import ghl_async_pages
from ._harness import fake_server, measure
from ._report import Section
from .neighbour import NEIGHBOUR_RATE, _ghl_async, measure_beside
from .redis_shared import run_workers


def _ideal(requests: int, budget: int, interval: float) -> float:
    return ((requests - 1) // budget) * interval


def _one_process(
    conversations: int, messages: str, server_rate: str, **client: Any
) -> tuple[float, dict[str, Any], str]:
    with fake_server(conversations=conversations, messages=messages, rate=server_rate) as server:
        ids = server.stats()["conversationIds"]
        try:
            wall, _, _ = measure(lambda: ghl_async_pages(server.url, ids, 16, **client))
            outcome = "all pages"
        except Exception as exc:  # the "the fan-out dies" case
            wall, outcome = float("nan"), f"{type(exc).__name__}"
        return wall, server.stats(), outcome


def _arq_recipe(conversations: int, workers: int) -> tuple[float, dict[str, Any]] | None:
    """The README's arq recipe: RedisLimiter(RateLimit(100, 10.0)) in each worker."""
    from tests.support.redis_server import RedisServer

    if shutil.which("redis-server") is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        redis = RedisServer(Path(folder))
        redis.start()
        try:
            with fake_server(conversations=conversations, messages="95", rate="10/1s") as server:
                ids = server.stats()["conversationIds"]
                run = run_workers(server.url, redis.url, "location:arq", "100/10s", ids, workers)
                outputs, wall = run["outputs"], run["wall"]
                stats = server.stats()
        finally:
            redis.stop()
    assert sum(o["pages"] for o in outputs) == conversations * 10
    return wall, stats


def run(smoke: bool) -> Section:
    section = Section(
        title="The limiter beside others",
        what="The setups of issue 10, each against a strict sliding-window server. "
        "The alone and three-process rows are in 'Under a real budget' and 'Three "
        "processes, one budget, through Redis'.",
        columns=["setup", "requests", "time s", "% of ideal", "429s", "most in any window"],
    )
    # 1. An explicit RateLimit(100, 10.0) against a server that allows 10 per 1 s.
    conversations = 3 if smoke else 8
    requests = conversations * 10
    wall, stats, outcome = _one_process(
        conversations, "950", "10/1s", rate_limit=RateLimit(100, 10.0)
    )
    section.rows.append(
        [
            "explicit RateLimit(100, 10.0), server allows 10 per 1 s",
            stats["requests"],
            wall,
            f"{100 * _ideal(requests, 10, 1.0) / wall:.0f}%" if wall == wall else outcome,
            stats["throttled"],
            stats["maxInWindow"],
        ]
    )
    # 2. The README's arq recipe with two workers, same server.
    arq = _arq_recipe(4 if smoke else 11, 2)
    if arq is not None:
        wall, stats = arq
        requests = (4 if smoke else 11) * 10
        section.rows.append(
            [
                "arq recipe: 2 workers, RedisLimiter(RateLimit(100, 10.0)), 10 per 1 s",
                stats["requests"],
                wall,
                f"{100 * _ideal(requests, 10, 1.0) / wall:.0f}% (workers let go together)",
                stats["throttled"],
                stats["maxInWindow"],
            ]
        )
    # 3. The default (100 per 10 s until told) against a server announcing 8 per 1 s.
    conversations = 4 if smoke else 11  # 550 messages: 6 requests each
    requests = conversations * 6
    wall, stats, outcome = _one_process(conversations, "550", "8/1s")
    section.rows.append(
        [
            "default settings, server announces 8 per 1 s",
            stats["requests"],
            wall,
            f"{100 * _ideal(requests, 8, 1.0) / wall:.0f}%",
            stats["throttled"],
            stats["maxInWindow"],
        ]
    )
    # 4. Beside a neighbour spending a quarter of 25 per 1 s.
    beside = measure_beside(_ghl_async, 4 if smoke else 15)
    section.rows.append(
        [
            f"beside a neighbour spending {NEIGHBOUR_RATE:g} of 25 per 1 s",
            int(beside["pages"] + beside["ours_429"]),
            beside["wall"],
            f"{100 * beside['used']:.0f}% of what the neighbour left",
            f"{int(beside['ours_429'])} ({100 * beside['ours_share']:.1f}% of ours; "
            f"the neighbour's: {100 * beside['theirs_share']:.0f}%)",
            "n/a",
        ]
    )
    section.notes.append(
        "Targets (issue 10): the explicit cap at most one 429 and >= 90% of ideal; "
        "beside a neighbour <= 1% of ours answered 429 and >= 90% of what it leaves used; "
        "learning 8 per 1 s >= 96% of ideal."
    )
    return section
