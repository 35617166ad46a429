"""An agency's locations on 1, 2 and 3 arq workers (issue 14): pages/s against the budgets.

A FakeAgency (``serve-fake --locations K``, its own process) with K compressed budgets, a
throwaway redis-server, and N ``ghl-async worker`` processes; one ``export_location`` job
per location. Each run starts from an empty Redis and output, timed from the enqueue to
the last location settled. Worker CPU comes from /proc (user + system of every worker),
so "pages per worker CPU second" is what one core sustains.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ._report import Section


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fake_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def _start_workers(
    count: int, redis_url: str, info_path: Path, max_jobs: int
) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "ghl_async", "worker", "--redis", redis_url]
    command += ["--tokens-file", str(info_path), "--max-jobs", str(max_jobs)]
    command += ["--poll-delay", "0.1"]
    return [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


async def _one_run(
    workers: int, info: dict[str, Any], info_path: Path, redis_url: str, folder: Path, rate: str
) -> tuple[float, float, int, int, int, list[str]]:
    from arq import create_pool
    from arq.connections import RedisSettings

    from ghl_async import RateLimit
    from ghl_async.export.jobs import enqueue_locations, read_run

    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    before = _fake_stats(info["url"])
    procs = _start_workers(workers, redis_url, info_path, len(info["locations"]))
    try:
        await asyncio.sleep(1.5)  # the workers import and connect before the clock starts
        cpu_before = sum(_cpu_seconds(p.pid) for p in procs)
        count, interval = rate.split("/")
        started = time.perf_counter()
        run_id = await enqueue_locations(
            pool,
            [location["id"] for location in info["locations"]],
            str(folder / f"out{workers}"),
            base_url=info["url"],
            rate_limit=RateLimit(int(count), float(interval.rstrip("s"))),
            concurrency=8,
        )
        while True:
            run = await read_run(pool, run_id)
            assert run is not None
            if run.finished:
                break
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - started
        cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu_before
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        await pool.aclose()
    errors = [s.error for s in run.locations if s.error]
    after = _fake_stats(info["url"])
    pages = sum(
        after["locations"][lid]["requests"] - before["locations"][lid]["requests"]
        for lid in after["locations"]
    )
    throttled = after["throttled"] - before["throttled"]
    return wall, cpu, pages, run.messages, throttled, errors


def run(smoke: bool) -> Section:
    from tests.support.redis_server import RedisServer  # the tests' throwaway redis-server

    locations = 6 if smoke else 40
    conversations = 4 if smoke else 50
    budget, interval = 50, 1.0
    rate = f"{budget}/{interval:g}s"
    summed = locations * budget / interval
    section = Section(
        title="An agency's locations on arq workers",
        what=f"{locations} locations, each its own budget of {budget} requests per "
        f"{interval:g} s ({summed:,.0f} requests/s summed), one `export_location` job per "
        f"location on 1, 2 and 3 `ghl-async worker` processes; the fake agency runs in "
        f"its own process. Pages are the requests the fake served.",
        columns=[
            "workers",
            "time s",
            "pages/s",
            "% of summed budgets",
            "worker CPU ms/page",
            "pages per worker CPU s",
            "429s",
            "locations with failures",
        ],
    )
    if shutil.which("redis-server") is None:
        section.notes.append("Skipped: redis-server is not installed (make test installs it).")
        return section
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis = RedisServer(folder)
        redis.start()
        info_path = folder / "agency.json"
        fake = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ghl_async",
                "serve-fake",
                "--port",
                "0",
                "--locations",
                str(locations),
                "--conversations",
                str(conversations),
                "--messages",
                "50-150" if not smoke else "100-400",
                "--rate",
                rate,
                "--info",
                str(info_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not info_path.exists() or not info_path.stat().st_size:
                if time.monotonic() > deadline:
                    raise RuntimeError("serve-fake did not start")
                time.sleep(0.1)
            time.sleep(0.2)
            info = json.loads(info_path.read_text())
            fake_cpu = _cpu_seconds(fake.pid)
            for workers in (1, 2, 3):
                time.sleep(interval)  # a fresh window for every location
                wall, cpu, pages, messages, throttled, errors = asyncio.run(
                    _one_run(workers, info, info_path, redis.url, folder, rate)
                )
                section.rows.append(
                    [
                        workers,
                        wall,
                        pages / wall,
                        f"{100 * pages / wall / summed:.0f}%",
                        1000 * cpu / max(1, pages),
                        pages / max(1e-9, cpu),
                        throttled,
                        len(errors),
                    ]
                )
                if errors:
                    section.notes.append(f"{workers} worker(s): {errors[0]}")
            fake_cpu = _cpu_seconds(fake.pid) - fake_cpu
        finally:
            fake.terminate()
            fake.wait(timeout=30)
            redis.stop()
    section.notes.append(
        f"{messages:,} messages a run. The fake agency used {fake_cpu:.1f} CPU s over the "
        f"three runs: on a 2-core machine it competes with the workers, so past one worker "
        f"the aggregate is bounded by the cores, not the budgets."
    )
    section.notes.append(
        f"load average (1 min) after the runs: {os.getloadavg()[0]:.1f} "
        f"(other work on the machine shares the cores)."
    )
    return section
