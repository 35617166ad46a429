"""The Redis limiter with a real redis-server: several processes, one budget."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import pytest
import redis.asyncio as aioredis

from ghl_async import Client, RateLimit, Reply, errors
from ghl_async._sansio import RateLimitHeaders
from ghl_async.ratelimit.redis import RedisLimiter
from ghl_async.testing import FakeHighLevel
from tests.support.helpers import LogCapture
from tests.support.redis_server import RedisServer


async def run_workers(
    fake: FakeHighLevel, redis: RedisServer, key: str, rate: str, ids: list[str], n: int
) -> list[dict[str, int]]:
    """Run ``n`` worker processes (tests/support/redis_worker.py) on one Redis key, ids dealt out
    in turn; return what each reported."""
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.redis_worker",
            fake.url,
            fake.token,
            redis.url,
            key,
            rate,
            *ids[i::n],
            stdout=asyncio.subprocess.PIPE,
        )
        for i in range(n)
    ]
    results = []
    for worker in workers:
        out, _ = await worker.communicate()
        assert worker.returncode == 0
        results.append(json.loads(out))
    return results


pytestmark = pytest.mark.anyio


async def test_processes_sharing_a_key_never_overspend_together(
    redis_server: RedisServer,
) -> None:
    budget = RateLimit(20, 1.0)
    async with FakeHighLevel(
        conversations=15, messages=(40, 90), seed=41, rate_limit=budget
    ) as fake:
        ids = fake.conversation_ids
        results = await run_workers(fake, redis_server, "location:shared", "20/1s", ids, 3)
    pages = sum(r["pages"] for r in results)
    assert pages == fake.stats.served
    assert pages > 3 * budget.max_requests  # several windows' worth
    assert fake.stats.throttled == 0
    assert fake.stats.max_in_window <= budget.max_requests


async def test_a_429_in_one_process_pauses_the_others(redis_server: RedisServer) -> None:
    a = RedisLimiter(redis_server.url, key="k", rate_limit=RateLimit(50, 1.0))
    b = RedisLimiter(redis_server.url, key="k", rate_limit=RateLimit(50, 1.0))
    try:
        ticket = await a.acquire()
        await a.release(ticket, Reply(429, RateLimitHeaders(), retry_after=0.6))
        loop = asyncio.get_running_loop()
        start = loop.time()
        ticket = await b.acquire()
        waited = loop.time() - start
        await b.release(ticket, None)
        assert 0.5 <= waited < 1.5
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_window_is_shared_and_the_server_budget_learned(
    redis_server: RedisServer,
) -> None:
    a = RedisLimiter(redis_server.url, key="w", rate_limit=RateLimit(10, 1.0))
    b = RedisLimiter(redis_server.url, key="w", rate_limit=RateLimit(10, 1.0))
    try:
        first = await a.acquire()
        # The server announces a tighter budget: 3 per second.
        await a.release(first, Reply(200, RateLimitHeaders(3, 1.0, 2, 1000, 999)))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for limiter in (a, b, a):
            ticket = await limiter.acquire()
            await limiter.release(ticket, Reply(200, RateLimitHeaders(3, 1.0, None, None, None)))
        # Three slots in all per second: the third of these waited for the first to free.
        assert loop.time() - start >= 0.8
        redis = aioredis.Redis.from_url(redis_server.url)
        budget = await redis.hgetall(a.keys[2])
        assert budget[b"max"] == b"3" and budget[b"daily_remaining"] == b"999"
        await redis.aclose()
    finally:
        await a.aclose()
        await b.aclose()


async def test_keys_expire_on_their_own(redis_server: RedisServer) -> None:
    limiter = RedisLimiter(
        redis_server.url, key="exp", rate_limit=RateLimit(5, 0.2), prefix="test:"
    )
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        ticket = await limiter.acquire()
        # A neighbour holds 3: all five keys are written.
        await limiter.release(ticket, Reply(200, RateLimitHeaders(5, 0.2, 1, 1000, 991)))
        ticket = await limiter.acquire()
        announced = RateLimitHeaders(5, 0.2, 4, 1000, 990)
        await limiter.release(ticket, Reply(429, announced, retry_after=0.1))
        for key in limiter.keys:
            assert key.startswith("test:exp:")
            assert await redis.pttl(key) > 0  # exists, with a time to live
        assert set(await redis.keys("*")) == {k.encode() for k in limiter.keys}
        # The pause key goes first, on its own.
        await asyncio.sleep(1.3)
        assert await redis.exists(limiter.keys[1]) == 0
    finally:
        await limiter.aclose()
        await redis.aclose()


async def test_redis_gone_raises_a_clear_error_then_recovers(
    redis_server: RedisServer,
) -> None:
    async with FakeHighLevel(conversations=3, messages=30) as fake:
        limiter = RedisLimiter(
            redis_server.url, key="gone", rate_limit=RateLimit(50, 1.0), timeout=0.5
        )
        try:
            async with Client(fake.token, base_url=fake.url, limiter=limiter) as client:
                await client.get_messages(fake.conversation_ids[0])
                redis_server.stop()
                loop = asyncio.get_running_loop()
                start = loop.time()
                with pytest.raises(errors.LimiterUnavailable) as caught:
                    await client.get_messages(fake.conversation_ids[1])
                assert loop.time() - start < 2.0
                assert "nothing was sent" in str(caught.value)
                assert fake.stats.requests == 1
                redis_server.start()
                pages = [p async for p in client.iter_pages(fake.conversation_ids[1])]
                assert [m.id for p in pages for m in p.messages] == [
                    m["id"] for m in fake.messages(fake.conversation_ids[1])
                ]
        finally:
            await limiter.aclose()


async def test_a_redis_restart_is_ridden_out_in_two_log_lines(
    redis_server: RedisServer, ghl_log: LogCapture
) -> None:
    async with FakeHighLevel(conversations=3, messages=30) as fake:
        limiter = RedisLimiter(
            redis_server.url, key="restart", rate_limit=RateLimit(50, 1.0), timeout=0.3,
            ride_out=10.0,
        )  # fmt: skip
        try:
            async with Client(fake.token, base_url=fake.url, limiter=limiter) as client:
                await client.get_messages(fake.conversation_ids[0])
                redis_server.stop()
                loop = asyncio.get_running_loop()
                # Redis comes back on the same port 1.5 s later, as after a restart.
                loop.call_later(1.5, redis_server.start)
                start = loop.time()
                page = await client.get_messages(fake.conversation_ids[1])
                assert 1.4 < loop.time() - start < 6.0
                assert [m.id for m in page.messages]
        finally:
            await limiter.aclose()
    lines = [r.getMessage() for r in ghl_log.records if "Redis" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis is unavailable") and "waiting up to 10 s" in lines[0]
    assert lines[1].startswith("Redis is back after")


async def test_an_outage_longer_than_ride_out_fails_closed_in_one_line() -> None:
    from tests.support.redis_server import free_port

    limiter = RedisLimiter(
        f"redis://127.0.0.1:{free_port()}/0", key="down", timeout=0.2, ride_out=0.6
    )
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(errors.LimiterUnavailable, match="nothing was sent"):
            await limiter.acquire()
        assert 0.5 < loop.time() - start < 3.0
    finally:
        await limiter.aclose()
    # max_wait is kept too: a caller in a hurry is not held for the whole ride-out.
    hurried = RedisLimiter(
        f"redis://127.0.0.1:{free_port()}/0", key="down", timeout=0.1, ride_out=30.0
    )
    try:
        start = loop.time()
        with pytest.raises(errors.LimiterUnavailable):
            await hurried.acquire(max_wait=0.5)
        assert loop.time() - start < 3.0
    finally:
        await hurried.aclose()


async def test_local_fallback_when_asked(ghl_log: LogCapture) -> None:
    from tests.support.redis_server import free_port

    async with FakeHighLevel(conversations=2, messages=5) as fake:
        limiter = RedisLimiter(
            f"redis://127.0.0.1:{free_port()}/0",
            key="none",
            rate_limit=RateLimit(40, 1.0),
            on_redis_error="local",
            timeout=0.3,
        )
        try:
            async with Client(fake.token, base_url=fake.url, limiter=limiter) as client:
                page = await client.get_messages(fake.conversation_ids[0])
            assert len(page.messages) == 5
        finally:
            await limiter.aclose()
    warnings = [r for r in ghl_log.records if r.levelno == logging.WARNING]
    assert any("falling back to a local limiter at 10 per 1 s" in r.getMessage() for r in warnings)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RedisLimiter("redis://127.0.0.1:1/0", key="")
    with pytest.raises(ValueError):
        RedisLimiter("redis://127.0.0.1:1/0", key="k", on_redis_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RedisLimiter("redis://127.0.0.1:1/0", key="k", local_share=0)


async def test_a_cap_and_a_tighter_server_budget_both_hold_across_processes(
    redis_server: RedisServer,
) -> None:
    """The README's arq recipe (RateLimit(100, 10.0)) with two workers against a server
    that allows 10 a second."""
    async with FakeHighLevel(
        conversations=8, messages=(30, 50), seed=42, rate_limit=RateLimit(10, 1.0)
    ) as fake:
        ids = fake.conversation_ids
        results = await run_workers(fake, redis_server, "location:arq", "100/10s", ids, 2)
    assert sum(r["pages"] for r in results) == fake.stats.served
    assert fake.stats.throttled <= 1  # at most the probe, before the budget is known
    assert fake.stats.max_in_window <= 10


async def test_a_long_pause_fails_other_processes_at_once(redis_server: RedisServer) -> None:
    a = RedisLimiter(redis_server.url, key="p", rate_limit=RateLimit(50, 1.0))
    b = RedisLimiter(redis_server.url, key="p", rate_limit=RateLimit(50, 1.0))
    try:
        ticket = await a.acquire()
        await a.release(ticket, Reply(429, RateLimitHeaders(), retry_after=30.0))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for limiter in (b, a, b):
            with pytest.raises(errors.RateLimitError) as caught:
                await limiter.acquire(max_wait=5.0)
            assert caught.value.retry_after is not None
            assert 25.0 < caught.value.retry_after <= 30.0
            assert not isinstance(caught.value, errors.DailyLimitExceeded)
        assert loop.time() - start < 1.0
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_spent_daily_budget_stops_every_process_until_the_reset(
    redis_server: RedisServer,
) -> None:
    a = RedisLimiter(redis_server.url, key="d")
    b = RedisLimiter(redis_server.url, key="d")
    try:
        ticket = await a.acquire()
        spent = Reply(200, RateLimitHeaders(100, 10.0, 99, 1000, 0), daily_reset_in=600.0)
        await a.release(ticket, spent)
        for limiter in (b, a, b):
            with pytest.raises(errors.DailyLimitExceeded) as caught:
                await limiter.acquire(max_wait=120.0)
            assert caught.value.resets_at is not None
            assert caught.value.resets_at == pytest.approx(time.time() + 600, abs=5)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_neighbour_seen_by_one_process_holds_back_the_others(
    redis_server: RedisServer,
) -> None:
    a = RedisLimiter(redis_server.url, key="n", rate_limit=RateLimit(10, 1.0))
    b = RedisLimiter(redis_server.url, key="n", rate_limit=RateLimit(10, 1.0))
    try:
        ticket = await a.acquire()
        # 8 counted where we sent 1: a neighbour holds 7; with room to grow, 8 slots.
        await a.release(ticket, Reply(200, RateLimitHeaders(10, 1.0, 2, None, None)))
        redis = aioredis.Redis.from_url(redis_server.url)
        assert await redis.zcard(a.keys[4]) == 8
        await redis.aclose()
        loop = asyncio.get_running_loop()
        start = loop.time()
        ticket = await b.acquire()  # 1 of ours and 8 held back: one more may go
        await b.release(ticket, None)
        start = loop.time()
        ticket = await b.acquire()  # now the window is full
        assert loop.time() - start >= 0.8
        await b.release(ticket, None)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_single_neighbour_request_is_reserved_in_redis_too(
    redis_server: RedisServer,
) -> None:
    limiter = RedisLimiter(redis_server.url, key="one", rate_limit=RateLimit(10, 1.0))
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        ticket = await limiter.acquire()
        # 2 counted where we sent 1: one neighbour request, two slots with its room.
        await limiter.release(ticket, Reply(200, RateLimitHeaders(10, 1.0, 8, None, None)))
        assert await redis.zcard(limiter.keys[4]) == 2
    finally:
        await limiter.aclose()
        await redis.aclose()


async def test_no_header_value_makes_the_script_work_beyond_the_budget(
    redis_server: RedisServer,
) -> None:
    limiter = RedisLimiter(redis_server.url, key="huge")
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        ticket = await limiter.acquire()
        # Past the parser's clamps, straight to the script: a budget of a billion.
        absurd = Reply(200, RateLimitHeaders(10**9, 1.0, 0, None, None))
        loop = asyncio.get_running_loop()
        start = loop.time()
        await limiter.release(ticket, absurd)
        assert loop.time() - start < 1.0
        assert await redis.hget(limiter.keys[2], "max") == b"10000"
        assert await redis.zcard(limiter.keys[4]) <= 10_000
    finally:
        await limiter.aclose()
        await redis.aclose()


async def test_max_wait_refuses_at_once_when_the_soonest_slot_frees_too_late(
    redis_server: RedisServer,
) -> None:
    a = RedisLimiter(redis_server.url, key="w", rate_limit=RateLimit(2, 1.0))
    b = RedisLimiter(redis_server.url, key="w", rate_limit=RateLimit(2, 1.0))
    try:
        probe = await a.acquire()
        await a.release(probe, Reply(200, RateLimitHeaders(2, 1.0, 1)))
        await b.acquire()  # both slots held: the probe's frees in about 1 s
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(errors.RateLimitError) as caught:
            await b.acquire(max_wait=0.3)
        assert loop.time() - start < 0.25  # refused, not slept on
        assert caught.value.status is None and "nothing was sent" in str(caught.value)
        # At most one interval and Redis's one millisecond: TIME drops the fraction of a
        # millisecond, so a slot frees only once a whole interval has passed to the ms.
        assert caught.value.retry_after is not None and 0.5 < caught.value.retry_after <= 1.001
        # A bound the soonest slot fits in is waited out.
        await a.acquire(max_wait=2.0)
        assert 0.5 < loop.time() - start < 1.5
    finally:
        await a.aclose()
        await b.aclose()


async def test_neighbour_slots_past_their_end_wait_for_a_later_reply_in_redis_too(
    redis_server: RedisServer,
) -> None:
    limiter = RedisLimiter(redis_server.url, key="past", rate_limit=RateLimit(10, 0.2))
    redis = aioredis.Redis.from_url(redis_server.url)
    booked = limiter.keys[4]
    alone = Reply(200, RateLimitHeaders(10, 0.2, 9, None, None))
    try:
        ticket = await limiter.acquire()
        await limiter.release(ticket, Reply(200, RateLimitHeaders(10, 0.2, 2, None, None)))
        assert await redis.zcard(booked) == 8
        before = await limiter.acquire()  # sent before the slots' end
        await asyncio.sleep(0.4)
        # Its reply cannot say the neighbour left after it was sent: all 8 stay.
        await limiter.release(before, alone)
        assert await redis.zcard(booked) == 8
        # Nothing out: a send takes the place of one; its reply frees one more.
        after = await limiter.acquire()
        assert await redis.zcard(booked) == 7
        await limiter.release(after, alone)
        assert await redis.zcard(booked) == 6
    finally:
        await limiter.aclose()
        await redis.aclose()


async def test_a_pause_stops_the_clock_of_neighbour_slots_in_redis_too(
    redis_server: RedisServer,
) -> None:
    limiter = RedisLimiter(redis_server.url, key="frozen", rate_limit=RateLimit(10, 0.2))
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        ticket = await limiter.acquire()
        await limiter.release(ticket, Reply(200, RateLimitHeaders(10, 0.2, 2, None, None)))
        ends = [score for _, score in await redis.zrange(limiter.keys[4], 0, -1, withscores=True)]
        assert len(ends) == 8
        ticket = await limiter.acquire()
        await limiter.release(ticket, Reply(429, RateLimitHeaders(10, 0.2, 0, None, None), 1.0))
        paused = float(await redis.get(limiter.keys[1]))
        # They would have ended within the pause: their clock stopped for its length.
        after = [score for _, score in await redis.zrange(limiter.keys[4], 0, -1, withscores=True)]
        assert min(after) >= paused
        assert min(after) - max(ends) <= 1000 + 50
    finally:
        await limiter.aclose()
        await redis.aclose()
