"""Done-when test of the arq export: three real workers, one SIGKILLed mid-run.

A real redis-server, a FakeAgency of 20 locations (each its own compressed budget) in
this process, three ``ghl-async worker`` processes, and ``ghl-async export --queue``
enqueueing one job per location, into a real PostgreSQL (``--to``) or JSON Lines parts
(``--out DIR``). Once a worker is writing a location, it is SIGKILLed; its job is picked
up elsewhere after its lease and resumes from the state the sink committed. Every
message of every location ends up in the sink exactly once, the fake answers no 429,
and the export command exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from arq import create_pool
from arq.connections import RedisSettings

from ghl_async import RateLimit
from ghl_async.export.jobs import part_path, read_run
from ghl_async.testing import FakeAgency
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.anyio

LOCATIONS = 20
BUDGET = RateLimit(10, 1.0)
# Each location's compressed budget: a request every 300 ms, so a location's pages
# (five or six) take a second or two and a progress report (one every 500 ms) sees it
# part way.
RATE = "1/300ms"
PAGE = 500


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ghl_async", *args]


def part_ids(out_dir: Path, location_id: str) -> list[str]:
    lines = Path(part_path(str(out_dir), location_id)).read_bytes().splitlines()
    return [json.loads(line)["id"] for line in lines]


@pytest.mark.parametrize("sink", ["postgres", "out"])
async def test_three_workers_one_killed_every_message_once(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
    sink: str,
) -> None:
    out_dir = tmp_path / "out"
    dsn = request.getfixturevalue("postgres_dsn") if sink == "postgres" else ""
    target = ["--to", dsn] if dsn else ["--out", str(out_dir)]
    async with FakeAgency(
        LOCATIONS, conversations=15, messages=(50, 250), seed=3, rate_limit=BUDGET
    ) as agency:
        tokens = tmp_path / "tokens.json"
        tokens.write_text(json.dumps(agency.info()))
        locations_file = tmp_path / "locations.txt"
        locations_file.write_text("\n".join(agency.location_ids) + "\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        logs = [(tmp_path / f"worker{i}.log").open("wb") for i in range(3)]
        workers = [
            await asyncio.create_subprocess_exec(
                *_command(
                    "worker",
                    "--redis",
                    redis_server.url,
                    "--tokens-file",
                    str(tokens),
                    "--max-jobs",
                    "4",
                    "--lease",
                    "1.5",
                    "--poll-delay",
                    "0.2",
                ),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
            for log in logs
        ]
        pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
        export = await asyncio.create_subprocess_exec(
            *_command(
                "export",
                "--locations-file",
                str(locations_file),
                "--queue",
                redis_server.url,
                *target,
                "--base-url",
                agency.url,
                "--rate",
                RATE,
                "--concurrency",
                "4",
                "--no-progress",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        expected = {
            location_id: sorted(m["id"] for c in fake.conversation_ids for m in fake.messages(c))
            for location_id, fake in agency.locations.items()
        }
        try:
            # Kill the first worker seen writing a location with two pages still to read:
            # a report is up to half a second old, two pages take at least 600 ms.
            pids = {f":{w.pid}": w for w in workers}
            victim = None
            deadline = time.monotonic() + 30
            while victim is None and time.monotonic() < deadline:
                run = await read_run(pool)
                for state in run.locations if run else []:
                    owner = next(
                        (w for s, w in pids.items() if (state.worker or "").endswith(s)), None
                    )
                    total = len(expected[state.location_id])
                    if (
                        state.state == "running"
                        and 0 < state.messages <= total - 2 * PAGE
                        and owner is not None
                    ):
                        victim = owner
                        break
                await asyncio.sleep(0.05)
            assert victim is not None, f"no worker was seen writing: {run}"
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            try:
                _, stderr = await asyncio.wait_for(export.communicate(), 90)
            except asyncio.TimeoutError:
                # Say where it stood: the run's state and the end of each worker's log.
                stuck = await read_run(pool)
                tails = "\n".join(
                    f"-- worker {i}:\n" + (tmp_path / f"worker{i}.log").read_text()[-2000:]
                    for i in range(3)
                )
                pytest.fail(f"the run did not end within 90 s: {stuck}\n{tails}")
            assert export.returncode == 0, stderr.decode()
            run = await read_run(pool)
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                await asyncio.wait_for(worker.wait(), 20)
            if export.returncode is None:
                export.kill()
                await export.wait()
            await pool.aclose()
            for log in logs:
                log.close()

        assert run is not None and run.finished and run.ok
        assert any(s.tries > 1 for s in run.locations), "no job was resumed"
        states = {s.location_id: s for s in run.locations}
        if dsn:
            connection = await asyncpg.connect(dsn)
            try:
                rows = await connection.fetch("SELECT id, location_id FROM messages")
                committed = await connection.fetch(
                    "SELECT location_id, done, messages FROM export_state"
                )
            finally:
                await connection.close()
            held: dict[str, list[str]] = {}
            for row in rows:
                held.setdefault(row["location_id"], []).append(row["id"])
            assert {k: sorted(v) for k, v in held.items()} == expected
            assert len(rows) == agency.total_messages
            assert {s["location_id"] for s in committed} == set(expected)
            for row in committed:
                assert row["done"], row["location_id"]
                # Resumed from the committed state: no page was committed twice.
                assert row["messages"] == len(expected[row["location_id"]])
        else:
            for location_id, ids in expected.items():
                written = part_ids(out_dir, location_id)
                twice = len(written) - len(set(written))
                assert not twice, f"{twice} written twice: {states[location_id]}"
                assert sorted(written) == ids, location_id
        for state in run.locations:
            assert state.messages == len(expected[state.location_id])
        assert agency.throttled == 0
        assert max(agency.max_in_window.values()) <= BUDGET.max_requests
