"""Client.with_options: per-call retry, timeout and max_wait on a shared client."""

from __future__ import annotations

import logging

import pytest

from ghl_async import Client, RateLimit, RetryPolicy, errors
from ghl_async.testing import FakeHighLevel, Faults
from tests.support.helpers import LogCapture

pytestmark = pytest.mark.anyio


async def test_a_view_shares_connections_limiter_and_stats_but_not_its_settings() -> None:
    async with FakeHighLevel(conversations=3, messages=30) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            fast = client.with_options(max_retries=0, timeout=5.0, max_wait=1.0)
            assert fast.limiter is client.limiter and fast.stats is client.stats
            fake.inject("500", conversation_id=fake.conversation_ids[0])
            with pytest.raises(errors.ServerError):  # no retry through the view
                await fast.get_messages(fake.conversation_ids[0])
            # The client itself still retries (the default policy).
            fake.inject("500", conversation_id=fake.conversation_ids[1])
            page = await client.get_messages(fake.conversation_ids[1])
            assert page.messages
            assert client.stats.retries == 1 and client.stats.requests == 3
            await fast.aclose()  # closes nothing: the client still works
            assert (await client.get_messages(fake.conversation_ids[2])).messages
        with pytest.raises(RuntimeError, match="closed"):
            await fast.get_messages(fake.conversation_ids[2])


async def test_a_per_call_timeout_bounds_each_attempt() -> None:
    slow = Faults(latency=0.5)
    async with FakeHighLevel(conversations=1, messages=5, faults=slow) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            hurried = client.with_options(timeout=0.1, retry=RetryPolicy(max_attempts=1))
            with pytest.raises(errors.TransportError, match=r"within 0\.1 s"):
                await hurried.get_messages(fake.conversation_ids[0])
            page = await client.get_messages(fake.conversation_ids[0])  # 30 s: fine
            assert page.messages


async def test_max_wait_per_call_refuses_a_spent_budget_at_once() -> None:
    async with FakeHighLevel(conversations=4, messages=5, rate_limit=RateLimit(2, 5.0)) as fake:
        async with Client(fake.token, base_url=fake.url, rate_limit=RateLimit(2, 5.0)) as client:
            for conversation in fake.conversation_ids[:2]:
                await client.get_messages(conversation)
            handler = client.with_options(max_wait=0.5)
            with pytest.raises(errors.RateLimitError) as refused:
                await handler.get_messages(fake.conversation_ids[2])
            assert refused.value.retry_after is not None and refused.value.retry_after > 0.5
        assert fake.stats.requests == 2  # nothing was sent for the refused call


def test_bad_options_are_refused_before_anything() -> None:
    client = Client("pit-x")
    with pytest.raises(ValueError):
        client.with_options(max_retries=-1)
    with pytest.raises(ValueError):
        client.with_options(timeout=0)
    with pytest.raises(ValueError):
        client.with_options(max_wait=-1.0)
    with pytest.raises(TypeError):
        client.with_options(retry=3)  # type: ignore[arg-type]


async def test_one_debug_line_per_request_and_never_the_token(ghl_log: LogCapture) -> None:
    async with FakeHighLevel(conversations=2, messages=30) as fake:
        fake.inject("500", conversation_id=fake.conversation_ids[0])
        retry = RetryPolicy(backoff_base=0.001, backoff_cap=0.01)
        async with Client(fake.token, base_url=fake.url, retry=retry) as client:
            async for _ in client.fan_out_pages(fake.conversation_ids, page_size=10):
                pass
    lines = [r for r in ghl_log.records if r.levelno == logging.DEBUG and "GET " in r.getMessage()]
    assert len(lines) == fake.stats.requests
    first = lines[0].getMessage()
    assert first.startswith("GET /conversations/") and " in " in first and "attempt" in first
    assert any(" 500 in " in line.getMessage() for line in lines)
    retries = [
        r for r in ghl_log.records if r.levelno == logging.INFO and "retrying" in r.getMessage()
    ]
    assert len(retries) == 1
    assert all(fake.token not in r.getMessage() for r in ghl_log.records)
