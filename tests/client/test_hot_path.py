"""The shortcuts on the per-page path keep what the long way guarantees."""

from __future__ import annotations

import anyio
import pytest

from ghl_async import Client, LocalLimiter, Reply, RetryPolicy, errors
from ghl_async._sansio import RateLimitHeaders
from ghl_async.testing import FakeHighLevel

pytestmark = pytest.mark.anyio


def _learned(clock: list[float], max_requests: int, interval: float) -> LocalLimiter:
    limiter = LocalLimiter(clock=lambda: clock[0])
    budget = Reply(200, RateLimitHeaders(max_requests, interval, None, None, None), None)
    limiter.book.finish(0.0, budget, limiter.book.take(0.0))
    return limiter


async def test_acquire_nowait_takes_only_a_slot_acquire_would_take_without_waiting() -> None:
    clock = [0.0]
    limiter = _learned(clock, 2, 1.0)
    clock[0] = 1.5  # the learning send's window is over: two free slots
    first = limiter.acquire_nowait()
    limiter.acquire_nowait()
    with pytest.raises(anyio.WouldBlock):
        limiter.acquire_nowait()  # none free: the caller must queue in acquire()
    with pytest.raises(errors.RateLimitError):
        await limiter.acquire(max_wait=0.01)  # acquire's refusal is still acquire's
    limiter.release_nowait(first, None)
    with pytest.raises(anyio.WouldBlock):
        limiter.acquire_nowait()  # a finished send still counts within its window
    clock[0] = 3.0
    limiter.acquire_nowait()  # its window over, the slot is free again


async def test_release_nowait_is_release() -> None:
    clock = [0.0]
    limiter = _learned(clock, 1, 1.0)
    clock[0] = 2.0
    ticket = limiter.acquire_nowait()
    assert limiter.book.in_flight == 1
    await limiter.release(ticket, None)
    assert limiter.book.in_flight == 0
    clock[0] = 4.0
    limiter.release_nowait(limiter.acquire_nowait(), None)
    assert limiter.book.in_flight == 0


async def test_a_small_body_over_max_body_bytes_that_came_whole_fails_unretried() -> None:
    async with FakeHighLevel(conversations=1, messages=(3, 3), seed=1) as fake:
        retry = RetryPolicy(max_attempts=3)
        client = Client(fake.token, base_url=fake.url, max_body_bytes=64, retry=retry)
        async with client:
            conversation = fake.conversation_ids[0]
            with pytest.raises(errors.TransportError, match="max_body_bytes") as caught:
                await client.get_messages(conversation)
            assert not caught.value.retryable
            assert client.stats.requests == 1
        async with Client(fake.token, base_url=fake.url) as client:
            page = await client.get_messages(conversation)  # the same reply, under the cap
            assert len(page.messages) == 3
