"""The arq export through what production does to it (issue #23), on real processes.

A real redis-server (with an append-only file, so that a restart keeps the queue, as a
production Redis does), a FakeAgency over a socket in this process, real PostgreSQL,
``ghl-async worker`` processes and ``ghl-async export --queue``. One worker is
SIGKILLed, another SIGSTOPped past its lease then continued, and redis-server is
restarted mid-run: every message lands exactly once, nothing is throttled, the run ends
ok by itself, within the ideal time plus two leases.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

import asyncpg
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from ghl_async import RateLimit
from ghl_async.export.jobs import RedisGone, RideOut, RunState, read_run
from ghl_async.testing import FakeAgency
from ghl_async.testing._location import channel_admits
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

LEASE = 1.5
INTERVAL = 0.6  # each location's budget: one request every 600 ms
RATE = "1/600ms"
PAGE = 500


class DurableRedis(RedisServer):
    """A redis-server that keeps its data over a restart on the same port (AOF, fsync
    on every write), as the Redis behind a production queue does.
    """

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):  # not -LOADING: the data is back
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    server = DurableRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def pool(durable_redis: DurableRedis) -> AsyncIterator[ArqRedis]:
    redis = await create_pool(RedisSettings.from_dsn(durable_redis.url))
    yield redis
    await redis.aclose()


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ghl_async", *args]


def route_requests(agency: FakeAgency, location_id: str) -> int:
    """The export route's fewest requests for a location: 500 a page, each pass apart."""
    fake = agency.locations[location_id]
    kinds = [m["messageType"] for c in fake.conversation_ids for m in fake.messages(c)]
    rest = sum(channel_admits(None, kind) for kind in kinds)
    return sum(max(1, -(-n // PAGE)) for n in (rest, len(kinds) - rest))


async def start_worker(
    redis_url: str, tokens: Path, log: BinaryIO, *extra: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command(
            "worker",
            "--redis",
            redis_url,
            "--tokens-file",
            str(tokens),
            "--max-jobs",
            "8",
            "--lease",
            str(LEASE),
            "--poll-delay",
            "0.1",
            *extra,
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def owner_of(state_worker: str | None, workers: list[asyncio.subprocess.Process]) -> int | None:
    for index, worker in enumerate(workers):
        if (state_worker or "").endswith(f":{worker.pid}"):
            return index
    return None


@pytest.mark.slow
async def test_killed_frozen_workers_and_a_redis_restart_lose_nothing(
    durable_redis: DurableRedis,
    pool: ArqRedis,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    async with FakeAgency(
        8,
        conversations=20,
        messages=(200, 300),
        seed=23,
        rate_limit=RateLimit(1, INTERVAL),
    ) as agency:
        tokens = tmp_path / "tokens.json"
        tokens.write_text(json.dumps(agency.info()))
        locations_file = tmp_path / "locations.txt"
        locations_file.write_text("\n".join(agency.location_ids) + "\n")
        logs = [tmp_path / f"worker{i}.log" for i in range(3)]
        handles = [log.open("wb") for log in logs]
        workers = [await start_worker(durable_redis.url, tokens, h) for h in handles]
        expected = {
            location_id: sorted(m["id"] for c in fake.conversation_ids for m in fake.messages(c))
            for location_id, fake in agency.locations.items()
        }
        export = await asyncio.create_subprocess_exec(
            *command(
                "export",
                "--locations-file",
                str(locations_file),
                "--queue",
                durable_redis.url,
                "--to",
                postgres_dsn,
                "--base-url",
                agency.url,
                "--rate",
                RATE,
                "--concurrency",
                "2",
                "--no-progress",
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        downtime = 0.0
        run: RunState | None = None
        try:
            # Two workers each writing a location with four pages still to read.
            killed = frozen = None
            deadline = time.monotonic() + 30
            while frozen is None and time.monotonic() < deadline:
                run = await read_run(pool)
                busy: list[int] = []
                for state in run.locations if run else []:
                    index = owner_of(state.worker, workers)
                    left = len(expected[state.location_id]) - state.messages
                    writing = state.state == "running" and state.messages and left > 4 * PAGE
                    if writing and index is not None and index not in busy:
                        busy.append(index)
                if len(busy) >= 2:
                    killed, frozen = workers[busy[0]], workers[busy[1]]
                await asyncio.sleep(0.05)
            assert killed is not None and frozen is not None, f"no two workers busy: {run}"
            killed.send_signal(signal.SIGKILL)
            frozen.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            await asyncio.sleep(0.3)
            went = time.monotonic()
            durable_redis.stop()  # a crash: the append-only file keeps every write
            await asyncio.sleep(1.7)
            await asyncio.to_thread(durable_redis.start)
            downtime = time.monotonic() - went
            await asyncio.sleep(max(0.0, stopped + 2.5 * LEASE - time.monotonic()))
            frozen.send_signal(signal.SIGCONT)
            _, stderr = await asyncio.wait_for(export.communicate(), 60)
            ended = time.monotonic()
            assert export.returncode == 0, stderr.decode()
            run = await read_run(pool)
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGCONT)
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                await asyncio.wait_for(worker.wait(), 20)
            if export.returncode is None:
                export.kill()
                await export.wait()
            for handle in handles:
                handle.close()

        assert run is not None and run.finished and run.ok, run
        connection = await asyncpg.connect(postgres_dsn)
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
        for row in committed:
            assert row["done"], row["location_id"]
            # Every page committed once: the count the state carries is the location's.
            assert row["messages"] == len(expected[row["location_id"]]), row
        for state in run.locations:
            assert state.messages == len(expected[state.location_id]), state
        assert agency.throttled == 0
        assert max(agency.max_in_window.values()) <= 1

        # The slowest location at its budget, plus the outage (nothing is sent while
        # the budget's Redis is down): the ideal; the chaos may cost two leases more.
        # The clock starts at the first request (the loop's clock: time.monotonic).
        slowest = max((route_requests(agency, i) - 1) * INTERVAL for i in agency.location_ids)
        ideal = slowest + downtime
        first = min(f.stats.arrivals[0][0] for f in agency.locations.values())
        wall = ended - first
        print(f"wall {wall:.1f} s, ideal {ideal:.1f} s (+ 2 leases: {ideal + 2 * LEASE:.1f} s)")
        assert wall <= ideal + 2 * LEASE, (wall, ideal)

        # One line when the outage starts and one when it ends, never a traceback.
        text = stderr.decode()
        for index, log in enumerate(logs):
            said = log.read_text()
            assert "Traceback" not in said, said
            if workers[index] is not killed:
                assert said.count("Redis is unavailable") <= 1, said
                assert said.count("Redis is unavailable") == said.count("Redis is back"), said
        assert "Traceback" not in text, text
        assert text.count("Redis is unavailable") == 1, text
        assert text.count("Redis is back") == 1, text


async def test_a_worker_ends_in_one_line_when_redis_stays_away(
    durable_redis: DurableRedis, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"loc1": "t"}')
    log = tmp_path / "worker.log"
    handle = log.open("wb")
    worker = await start_worker(durable_redis.url, tokens, handle, "--ride-out", "1")
    try:
        await asyncio.sleep(1.5)  # started and polling
        durable_redis.stop()
        code = await asyncio.wait_for(worker.wait(), 15)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        handle.close()
    said = log.read_text()
    assert code == 1, said
    lines = said.splitlines()
    assert "Traceback" not in said, said
    assert [line for line in lines if "Redis" in line] == [
        "ghl-async: Redis is unavailable (ConnectionError): waiting up to 1 s for it to come back",
        "ghl-async: worker stopped: Redis was unavailable for over 1 s; its locations resume "
        "on the next worker from what their sinks hold",
    ], said


async def test_an_outage_is_ridden_out_in_two_lines(durable_redis: DurableRedis) -> None:
    # What status, export --queue and the workers do with each call to Redis.
    pool = await create_pool(RedisSettings.from_dsn(durable_redis.url))
    said: list[str] = []
    try:
        await pool.set("k", "v")
        durable_redis.stop()
        ride = RideOut(30, say=said.append)

        async def restart() -> None:
            await asyncio.sleep(0.6)
            await asyncio.to_thread(durable_redis.start)

        back = asyncio.ensure_future(restart())
        assert await ride.call(lambda: pool.get("k")) == b"v"
        await back
        assert len(said) == 2, said
        assert said[0] == (
            "Redis is unavailable (ConnectionError): waiting up to 30 s for it to come back"
        )
        assert said[1].startswith("Redis is back after ")
        # Longer than the ride-out: RedisGone, after the one line.
        durable_redis.stop()
        said.clear()
        short = RideOut(0.3, say=said.append)
        started = time.monotonic()
        with pytest.raises(RedisGone, match=r"unavailable for over 0\.3 s"):
            await short.call(lambda: pool.get("k"))
        assert 0.3 <= time.monotonic() - started < 1.5
        assert len(said) == 1
    finally:
        await pool.aclose()
