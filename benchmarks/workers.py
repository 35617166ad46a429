"""An agency's locations on 3 arq workers into PostgreSQL: requests and budgets used.

20 locations, each with its own compressed budget (the fake's and the jobs' ``--rate``
alike), a throwaway redis-server and PostgreSQL (the tests' ``RedisServer`` and
``PostgresServer``), 3 ``ghl-async worker`` processes, and one ``export_location`` job
per location enqueued with ``to=`` the database. The fake agency runs in this process's
event loop (it logs each request's arrival, and its data gives each location's
minimum), which otherwise only polls the run.

- **requests / minimum**: requests the fake admitted against the export route's fewest
  for the same data: both passes apart (every message but emails, then emails), each
  ``ceil(n / 500)`` pages and at least one (the route sees its end on a short page, or
  on a full one whose next cursor is empty). Target: at most 1.2x.
- **% of summed budgets once started**: for each location, the fastest its budget
  allows its requests (``(ceil(R / N) - 1)`` windows of ``N`` requests: the first
  window's requests go at once), summed, over the time from its first request to its
  last, summed. 100% is every location paging as fast as its budget lets it from the
  moment its job made a request. Target: at least 90%.
- **429s**: what the fake refused. Target: 0.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._report import Section

WORKERS = 3
LOCATIONS = 20
PAGE = 500  # the export route's largest page
BUDGET, INTERVAL = 1, 1.0  # each location's compressed budget: 1 request a second


def _start_workers(redis_url: str, info_path: Path) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "ghl_async", "worker", "--redis", redis_url]
    command += ["--tokens-file", str(info_path), "--max-jobs", str(LOCATIONS)]
    command += ["--poll-delay", "0.1"]
    return [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(WORKERS)
    ]


def route_minimum(kinds: list[str]) -> int:
    """The export route's fewest requests for messages of these types: two passes."""
    from ghl_async.testing._location import channel_admits

    rest = sum(channel_admits(None, kind) for kind in kinds)
    return sum(max(1, math.ceil(n / PAGE)) for n in (rest, len(kinds) - rest))


def fastest(requests: int) -> float:
    """Seconds from the first request to the last at best under ``BUDGET`` per ``INTERVAL``."""
    return (math.ceil(requests / BUDGET) - 1) * INTERVAL if requests else 0.0


async def _run(folder: Path, redis_url: str, dsn: str, smoke: bool) -> dict[str, Any]:
    import asyncpg
    from arq import create_pool
    from arq.connections import RedisSettings

    from ghl_async import RateLimit
    from ghl_async.export.jobs import enqueue_locations, read_run
    from ghl_async.testing import FakeAgency

    budget = RateLimit(BUDGET, INTERVAL)
    conversations, messages = (8, (100, 200)) if smoke else (20, (150, 250))
    async with FakeAgency(
        LOCATIONS, conversations=conversations, messages=messages, seed=11, rate_limit=budget
    ) as agency:
        info_path = folder / "agency.json"
        info_path.write_text(json.dumps(agency.info()))
        procs = _start_workers(redis_url, info_path)
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            await asyncio.sleep(1.5)  # the workers import and connect before the clock starts
            started = time.perf_counter()
            run_id = await enqueue_locations(
                pool,
                agency.location_ids,
                to=dsn,
                base_url=agency.url,
                rate_limit=budget,
                concurrency=4,
            )
            while True:
                run = await read_run(pool, run_id)
                assert run is not None
                if run.finished:
                    break
                await asyncio.sleep(0.1)
            wall = time.perf_counter() - started
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
            await pool.aclose()
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetchval("SELECT count(*) FROM messages")
        finally:
            await connection.close()
        requests, minimum, best, spans = 0, 0, 0.0, 0.0
        worst = 0.0
        for fake in agency.locations.values():
            kinds = [m["messageType"] for c in fake.conversation_ids for m in fake.messages(c)]
            made = sum(fake.stats.by_route.values())
            least = route_minimum(kinds)
            arrivals = [when for when, _ in fake.stats.arrivals]
            requests += made
            minimum += least
            worst = max(worst, made / least)
            best += fastest(made)
            spans += arrivals[-1] - arrivals[0] if arrivals else 0.0
        return {
            "wall": wall,
            "requests": requests,
            "minimum": minimum,
            "worst": worst,
            "used": best / spans if spans else 0.0,
            "throttled": agency.throttled,
            "messages": agency.total_messages,
            "rows": rows,
            "errors": [s.error for s in run.locations if s.state != "done"],
        }


def run(smoke: bool) -> Section:
    section = Section(
        title="An agency's locations on arq workers, into PostgreSQL",
        what=f"{LOCATIONS} locations, each its own budget of {BUDGET} request per "
        f"{INTERVAL:g} s, {WORKERS} `ghl-async worker` processes, one `export_location` job "
        "per location into one PostgreSQL database (`to=`). Requests are the ones the fake "
        "admitted; the minimum is the export route's for the same data (both passes, 500 "
        "messages a page); the budget share counts each location from its first request "
        "to its last.",
        columns=[
            "workers",
            "messages",
            "time s",
            "requests / location",
            "minimum / location",
            "requests / minimum",
            "worst location",
            "% of summed budgets once started",
            "429s",
        ],
    )
    if shutil.which("redis-server") is None:
        section.notes.append("Skipped: redis-server is not installed (make test installs it).")
        return section
    from tests.support.postgres_server import PostgresServer
    from tests.support.redis_server import RedisServer  # the tests' throwaway servers

    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as postgres:
        folder = Path(tmp)
        redis = RedisServer(folder)
        redis.start()
        try:
            result = asyncio.run(_run(folder, redis.url, postgres.create_database(), smoke))
        finally:
            redis.stop()
    section.rows.append(
        [
            WORKERS,
            result["messages"],
            result["wall"],
            result["requests"] / LOCATIONS,
            result["minimum"] / LOCATIONS,
            f"{result['requests'] / result['minimum']:.2f}x",
            f"{result['worst']:.2f}x",
            f"{100 * result['used']:.0f}%",
            result["throttled"],
        ]
    )
    ok = (
        result["requests"] <= 1.2 * result["minimum"]
        and result["used"] >= 0.9
        and result["throttled"] == 0
        and result["rows"] == result["messages"]
        and not result["errors"]
    )
    section.notes.append(
        f"Targets: at most 1.2x the minimum, at least 90% of the summed budgets, no 429: "
        f"{'met' if ok else 'NOT met'}. PostgreSQL holds {result['rows']:,} messages of "
        f"{result['messages']:,}."
    )
    if result["errors"]:
        section.notes.append(f"locations not done: {result['errors'][:3]}")
    section.notes.append(
        f"load average (1 min) after the run: {os.getloadavg()[0]:.1f} "
        f"(other work on the machine shares the cores)."
    )
    return section
