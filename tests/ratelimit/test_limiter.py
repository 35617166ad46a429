"""The rate limiter: its rules on a number line, then against the strict fake server."""

from __future__ import annotations

import asyncio
import heapq
import random
import time

import pytest

from ghl_async import Client, LocalLimiter, RateLimit, Reply, RetryPolicy, errors
from ghl_async._sansio import RateLimitHeaders
from ghl_async.ratelimit.book import Ticket
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio


def reply(
    status: int = 200,
    *,
    max_requests: int | None = None,
    interval: float | None = None,
    remaining: int | None = None,
    daily: int | None = None,
    retry_after: float | None = None,
) -> Reply:
    return Reply(
        status, RateLimitHeaders(max_requests, interval, remaining, None, daily), retry_after
    )


def learned_book(max_requests: int, interval: float) -> LocalLimiter:
    limiter = LocalLimiter()
    book = limiter.book
    book.finish(0.0, reply(max_requests=max_requests, interval=interval), book.take(0.0))
    return limiter


# -- the rules, with a number for a clock ------------------------------------------


def test_one_request_at_a_time_until_the_first_reply() -> None:
    book = LocalLimiter().book
    assert book.wait_time(0.0) == 0.0
    book.take(0.0)
    assert book.wait_time(0.0) is None  # wait for the reply
    book.finish(0.1, None)  # a failed probe lets the next one go
    assert book.wait_time(0.1) == 0.0
    book.take(0.1)
    book.finish(0.2, reply(max_requests=5, interval=1.0))
    assert book.learned
    assert (book.max_requests, book.interval) == (5, 1.0)


def test_a_full_window_waits_for_the_oldest_slot() -> None:
    book = learned_book(3, 1.0).book  # one slot held until t=1.0
    for _ in range(2):
        assert book.wait_time(0.0) == 0.0
        book.take(0.0)
    # Two in flight and the probe's slot (until 1.0): the probe's slot frees first.
    assert book.wait_time(0.0) == pytest.approx(1.0)
    book.finish(0.5, None)
    book.finish(0.6, None)
    assert book.wait_time(0.7) == pytest.approx(0.3)  # probe's slot frees at 1.0
    assert book.wait_time(1.0) == 0.0
    assert book.held(1.55) == 1


def test_an_explicit_rate_limit_is_a_cap() -> None:
    book = LocalLimiter(RateLimit(10, 1.0)).book
    book.take(0.0)
    book.finish(0.0, reply(max_requests=100, interval=1.0))
    assert (book.max_requests, book.interval) == (10, 1.0)
    book.take(0.0)
    book.finish(0.0, reply(max_requests=4, interval=1.0))
    assert (book.max_requests, book.interval) == (4, 1.0)


def test_the_default_follows_the_server_up_and_down() -> None:
    book = LocalLimiter().book
    book.take(0.0)
    book.finish(0.0, reply(max_requests=25, interval=10.0))
    assert book.max_requests == 25
    book.take(0.0)
    book.finish(0.0, reply(max_requests=1000, interval=10.0))
    assert book.max_requests == 1000


def test_a_lower_remaining_than_expected_holds_back() -> None:
    book = learned_book(10, 1.0).book  # holds 1
    ticket = book.take(0.0)
    # The server says 3 left where we expected 10 - 2 = 8: someone spent 5. They are
    # held back with one slot of room for the neighbour to grow: 6.
    book.finish(0.1, reply(max_requests=10, interval=1.0, remaining=3), ticket)
    assert book.held(0.1) == 2 + 6
    tickets = []
    for _ in range(2):
        assert book.wait_time(0.1) == 0.0
        tickets.append(book.take(0.1))
    # The probe's slot frees at 1.0; the neighbour's are held until one interval and
    # two round trips after the reply (1.3). Past that, only the reply of a send made
    # after their end frees them, one a reply: the two sent before cannot.
    assert book.wait_time(0.1) == pytest.approx(0.9)
    assert book.neighbour_slots(1.29) == 6
    for ticket in tickets:
        book.finish(1.31, reply(max_requests=10, interval=1.0, remaining=7), ticket)
    assert book.neighbour_slots(1.31) == 6
    # With nothing of ours out, a send takes the place of one; its reply, showing no
    # neighbour, frees one more.
    assert book.wait_time(1.31) == 0.0
    late = book.take(1.31)
    assert book.neighbour_slots(1.31) == 5
    book.finish(1.32, reply(max_requests=10, interval=1.0, remaining=9), late)
    assert book.neighbour_slots(1.32) == 4


def test_a_single_neighbour_request_is_reserved_with_its_room() -> None:
    book = learned_book(10, 1.0).book  # holds 1
    ticket = book.take(0.0)
    # 3 counted where the server could have counted our 2: one neighbour request,
    # reserved with one slot of room (a neighbour starting after us shows so first).
    book.finish(0.1, reply(max_requests=10, interval=1.0, remaining=7), ticket)
    assert book.neighbour_slots(0.1) == 2
    assert book.held(0.1) == 2 + 2
    # Exactly what we could have had counted: nothing is booked.
    ticket = book.take(0.2)
    book.finish(0.3, reply(max_requests=10, interval=1.0, remaining=10 - 3), ticket)
    assert book.neighbour_slots(0.3) == 2  # the first booking, not a second one


def test_slots_that_expired_during_a_reply_are_not_mistaken_for_a_neighbour() -> None:
    book = learned_book(3, 1.0).book  # the probe's slot frees at 1.0
    ticket = book.take(0.5)  # the server counts it and the probe: 1 left
    # The reply arrives after the probe's slot expired here: the server's "1 left"
    # is older than that, not a sign of someone else spending.
    book.finish(1.01, reply(max_requests=3, interval=1.0, remaining=1), ticket)
    assert book.held(1.01) == 1
    assert book.wait_time(1.01) == 0.0


def test_a_429_pauses_for_retry_after_or_the_interval() -> None:
    book = learned_book(10, 2.0).book
    book.take(1.0)
    book.finish(1.0, reply(429, retry_after=5.0))
    assert book.wait_time(1.0) == pytest.approx(5.0)
    assert book.wait_time(6.0) == 0.0
    book.take(7.0)
    book.finish(7.0, reply(429))
    assert book.wait_time(7.0) == pytest.approx(2.0)


def test_a_shorter_announced_interval_re_derives_every_slot_at_once() -> None:
    book = LocalLimiter().book
    book.take(0.0)
    book.finish(0.0, reply())  # learned with the default: slot until 10.0
    book.take(0.4)
    book.finish(0.5, reply(max_requests=2, interval=1.0))
    # Under the announced 1 s window the first slot ends at 1.0, not 10.0: the server
    # counted that request before 0.0 and forgets it by 1.0.
    assert book.held(0.99) == 2
    assert book.held(1.01) == 1
    assert book.held(1.51) == 0


@pytest.mark.parametrize("seed", range(6))
def test_no_window_of_server_arrivals_ever_exceeds_the_budget(seed: int) -> None:
    """Simulated sends with random latency; the server sees each request at a random
    moment between its send and its reply, and counts in a sliding window."""
    rng = random.Random(seed)
    budget, interval = rng.choice([(5, 1.0), (25, 1.0), (100, 10.0)])
    limiter = LocalLimiter(RateLimit(budget, interval))
    book = limiter.book
    now = 0.0
    arrivals: list[float] = []
    replies: list[float] = []  # heap of reply times
    workers = rng.choice([4, 16, 64])
    sent = 0
    total = budget * 6
    while sent < total or replies:
        while sent < total and book.in_flight < workers:
            wait = book.wait_time(now)
            if wait != 0.0:
                break
            book.take(now)
            sent += 1
            latency = rng.choice([0.001, 0.05, 0.3, 2.5]) * rng.random()
            arrivals.append(now + latency * rng.random())
            heapq.heappush(replies, now + latency)
        wait = book.wait_time(now) if sent < total and book.in_flight < workers else None
        next_reply = replies[0] if replies else None
        candidates = [t for t in (next_reply, now + wait if wait else None) if t is not None]
        now = min(candidates)
        if next_reply is not None and next_reply <= now:
            heapq.heappop(replies)
            book.finish(now, reply(max_requests=budget, interval=interval))
    arrivals.sort()
    j = 0
    most = 0
    for i, t in enumerate(arrivals):
        while arrivals[j] <= t - interval:
            j += 1
        most = max(most, i - j + 1)
    assert most <= budget
    assert sent == total


# -- against the strict fake server ------------------------------------------------


async def test_a_full_budget_run_never_overspends(server: ServerFactory) -> None:
    async with server(
        conversations=40, messages=(150, 400), seed=11, rate_limit=RateLimit(20, 0.5)
    ) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            start = asyncio.get_running_loop().time()
            count = 0
            async for _ in client.fan_out_pages(fake.conversation_ids):
                count += 1
            elapsed = asyncio.get_running_loop().time() - start
    assert fake.stats.throttled == 0
    assert fake.stats.max_in_window <= 20
    assert client.stats.requests == fake.stats.requests == count
    # The window allows (count - 1) // 20 full windows; allow generous noise on 2 cores.
    ideal = ((count - 1) // 20) * 0.5
    assert ideal * 0.9 <= elapsed <= ideal * 1.5 + 1.0


async def test_a_smaller_server_budget_is_learned_before_any_burst(
    server: ServerFactory,
) -> None:
    async with server(
        conversations=30, messages=(20, 60), seed=12, rate_limit=RateLimit(10, 1.0)
    ) as fake:
        async with Client(fake.token, base_url=fake.url) as client:  # default 100 / 10 s
            pages = [p async for _, p in client.fan_out_pages(fake.conversation_ids)]
            assert client.limiter is not None
    assert len(pages) == fake.stats.served
    assert fake.stats.throttled == 0
    assert fake.stats.max_in_window <= 10


async def test_a_neighbour_spending_the_budget_makes_the_client_hold_back(
    server: ServerFactory,
) -> None:
    async with server(
        conversations=20, messages=(20, 50), seed=13, rate_limit=RateLimit(20, 1.0)
    ) as fake:
        fake.spend(15)
        async with Client(fake.token, base_url=fake.url) as client:
            pages = client.fan_out_pages(fake.conversation_ids, page_size=10)
            count = sum([1 async for _ in pages])
    assert count > 40
    assert fake.stats.throttled == 0


async def test_a_429_pauses_every_request_of_the_limiter(server: ServerFactory) -> None:
    async with server(
        conversations=12, messages=(150, 300), seed=14, rate_limit=RateLimit(1000, 1.0)
    ) as fake:
        victim = fake.conversation_ids[3]
        fake.inject("429", conversation_id=victim)  # answers Retry-After: 1
        async with Client(fake.token, base_url=fake.url, max_concurrency=8) as client:
            total = 0
            async for _ in client.fan_out(fake.conversation_ids, page_size=10):
                total += 1
    assert total == fake.total_messages
    assert client.stats.throttled == 1
    victim_path = f"/conversations/{victim}/messages"
    first_victim = next(t for t, path in fake.stats.arrivals if path == victim_path)
    during_pause = [
        t for t, _ in fake.stats.arrivals if first_victim + 0.05 < t < first_victim + 0.95
    ]
    assert during_pause == []
    after = [t for t, _ in fake.stats.arrivals if t >= first_victim + 0.95]
    assert after, "requests resume after the pause"


async def test_a_spent_daily_budget_raises_at_once(server: ServerFactory) -> None:
    async with server(conversations=3, messages=300, daily_limit=4) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(errors.DailyLimitExceeded) as caught:
                async for _ in client.iter_pages(fake.conversation_ids[0], page_size=50):
                    pass
    # The fourth reply said Daily-Remaining: 0, so the fifth page is refused without
    # being sent (no retry, no 429 spent on it).
    assert fake.stats.requests == 4
    assert caught.value.resets_at is not None
    # No Retry-After: the next midnight UTC.
    assert caught.value.resets_at == pytest.approx(
        time.time() + 86400 - time.time() % 86400, abs=5
    )
    assert client.stats.daily_remaining == 0


async def test_every_call_raises_daily_limit_exceeded_at_once_until_the_reset(
    server: ServerFactory,
) -> None:
    async with server(conversations=3, messages=30, daily_limit=2) as fake:
        async with (
            Client(fake.token, base_url=fake.url) as a,
            Client(fake.token, base_url=fake.url) as b,
        ):
            await a.get_messages(fake.conversation_ids[0])
            await a.get_messages(fake.conversation_ids[1])  # Daily-Remaining: 0
            loop = asyncio.get_running_loop()
            for client in (a, b, a, b):  # every client of the token, every call
                start = loop.time()
                with pytest.raises(errors.DailyLimitExceeded) as caught:
                    await client.get_messages(fake.conversation_ids[2])
                assert loop.time() - start < 0.5
                assert caught.value.resets_at is not None
                assert caught.value.resets_at > time.time()
    assert fake.stats.requests == 2


async def test_clients_of_one_token_share_one_limiter(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        async with (
            Client(fake.token, base_url=fake.url) as a,
            Client(fake.token, base_url=fake.url) as b,
            Client("other", base_url=fake.url) as c,
        ):
            assert a.limiter is b.limiter
            assert a.limiter is not c.limiter
            assert fake.token not in repr(a.limiter)
        mine = LocalLimiter(RateLimit(5, 1.0))
        async with Client(fake.token, base_url=fake.url, limiter=mine) as d:
            assert d.limiter is mine
            await d.get_messages(fake.conversation_ids[0])
        assert mine.book.learned


async def test_max_concurrency_bounds_requests_in_flight(server: ServerFactory) -> None:
    from ghl_async.testing import Faults

    async with server(
        conversations=12, messages=5, faults=Faults(latency=0.05), rate_limit=RateLimit(1000, 1.0)
    ) as fake:
        async with Client(fake.token, base_url=fake.url, max_concurrency=3) as client:
            await asyncio.gather(*(client.get_messages(c) for c in fake.conversation_ids))
    assert fake.stats.max_in_flight == 3


async def test_aiohttp_resends_pass_the_limiter_too(server: ServerFactory) -> None:
    async with server(conversations=4, messages=30, rate_limit=RateLimit(6, 1.0)) as fake:
        for conversation in fake.conversation_ids:
            fake.inject("reset", conversation_id=conversation)
        retry = RetryPolicy(backoff_base=0.001, backoff_cap=0.01)
        async with Client(fake.token, base_url=fake.url, retry=retry) as client:
            async for _ in client.fan_out_pages(fake.conversation_ids, page_size=10):
                pass
    assert fake.stats.faults["reset"] == 4
    assert client.stats.requests == fake.stats.requests
    assert fake.stats.throttled == 0
    assert fake.stats.max_in_window <= 6


async def test_resends_on_a_callers_session_pass_the_limiter_too(server: ServerFactory) -> None:
    # A caller's session keeps aiohttp's own resend: the per-request middleware meters it.
    import aiohttp

    async with server(conversations=4, messages=30, rate_limit=RateLimit(6, 1.0)) as fake:
        for conversation in fake.conversation_ids:
            fake.inject("reset", conversation_id=conversation)
        retry = RetryPolicy(backoff_base=0.001, backoff_cap=0.01)
        async with aiohttp.ClientSession() as session:
            assert session._retry_connection  # left as the caller made it
            async with Client(fake.token, base_url=fake.url, retry=retry, session=session) as c:
                async for _ in c.fan_out_pages(fake.conversation_ids, page_size=10):
                    pass
            assert session._retry_connection
    assert fake.stats.faults["reset"] == 4
    assert c.stats.requests == fake.stats.requests
    assert c.stats.retries == c.stats.requests - c.stats.pages >= 4
    assert fake.stats.throttled == 0
    assert fake.stats.max_in_window <= 6


async def test_a_dropped_pooled_connection_is_resent_even_with_no_retries(
    server: ServerFactory,
) -> None:
    # The resend on a fresh connection is not one of the policy's retries: a client
    # that allows none still gets its page when the server dropped the pooled connection.
    async with server(conversations=2, messages=10) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            once = client.with_options(max_retries=0)
            await once.get_messages(fake.conversation_ids[0])  # a pooled connection
            fake.inject("reset", conversation_id=fake.conversation_ids[1])
            page = await once.get_messages(fake.conversation_ids[1])
        assert len(page.messages) == 10
        assert fake.stats.faults["reset"] == 1
        assert client.stats.requests == fake.stats.requests == 3
        assert client.stats.retries == 1


async def test_a_second_client_with_a_tighter_cap_lowers_the_shared_budget(
    server: ServerFactory,
) -> None:
    async with server(conversations=1) as fake:
        async with (
            Client(fake.token, base_url=fake.url) as loose,
            Client(fake.token, base_url=fake.url, rate_limit=RateLimit(5, 1.0)) as tight,
        ):
            assert loose.limiter is tight.limiter
            assert isinstance(tight.limiter, LocalLimiter)
            assert (tight.limiter.book.max_requests, tight.limiter.book.interval) == (5, 1.0)


async def test_a_daily_429_stops_every_later_call_without_sending(server: ServerFactory) -> None:
    async with server(conversations=3, messages=30, daily_limit=2) as fake:
        async with Client(fake.token, base_url=fake.url, limiter=LocalLimiter()) as other:
            for conversation in fake.conversation_ids[:2]:
                await other.get_messages(conversation)  # someone else spends the day
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(errors.DailyLimitExceeded) as first:
                await client.get_messages(fake.conversation_ids[2])
            assert first.value.status == 429 and first.value.resets_at is not None
            with pytest.raises(errors.DailyLimitExceeded) as later:
                await client.get_messages(fake.conversation_ids[2])
            assert later.value.status is None  # refused here, nothing sent
            assert later.value.resets_at == pytest.approx(first.value.resets_at, abs=2)
    assert fake.stats.requests == 3


async def test_a_pause_longer_than_max_retry_after_fails_every_waiting_request_at_once(
    server: ServerFactory,
) -> None:
    async with server(conversations=6, messages=30, rate_limit=RateLimit(1000, 1.0)) as fake:
        retry = RetryPolicy(max_retry_after=0.5)
        cap = RateLimit(2, 1.0)  # so that the others wait in the limiter's queue
        async with (
            Client(fake.token, base_url=fake.url, retry=retry, rate_limit=cap) as a,
            Client(fake.token, base_url=fake.url, retry=retry) as b,
        ):
            await a.get_messages(fake.conversation_ids[0])
            fake.inject("429")  # Retry-After: 1, longer than the 0.5 allowed
            loop = asyncio.get_running_loop()
            start = loop.time()
            pairs = zip([a, b] * 3, fake.conversation_ids, strict=True)
            results = await asyncio.gather(
                *(c.get_messages(i) for c, i in pairs),
                return_exceptions=True,
            )
            elapsed = loop.time() - start
    assert elapsed < 0.5  # nobody slept on the pause
    assert all(isinstance(r, errors.RateLimitError) for r in results)
    refused = [r for r in results if isinstance(r, errors.RateLimitError) and r.status is None]
    assert len(refused) == 5  # only the first reached the server
    assert all(r.retry_after is not None and 0.5 < r.retry_after <= 1.0 for r in refused)
    assert fake.stats.requests == 2


async def test_a_pause_within_max_retry_after_is_waited_out(server: ServerFactory) -> None:
    async with server(conversations=2, messages=30, rate_limit=RateLimit(1000, 1.0)) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            fake.inject("429")  # Retry-After: 1
            pages = await asyncio.gather(*(client.get_messages(c) for c in fake.conversation_ids))
    assert [len(p.messages) for p in pages] == [20, 20]  # the default page size


class UserLimiter:
    """A user's own limiter (the :class:`Limiter` protocol), around a LocalLimiter."""

    def __init__(self) -> None:
        self.inner = LocalLimiter()
        self.acquired = 0

    async def acquire(
        self, *, max_wait: float | None = None, max_pause: float | None = None
    ) -> object:
        self.acquired += 1
        return await self.inner.acquire(max_wait=max_wait, max_pause=max_pause)

    async def release(self, ticket: object, reply: Reply | None) -> None:
        await self.inner.release(ticket, reply)


async def test_a_user_written_limiter_is_asked_for_every_send(server: ServerFactory) -> None:
    limiter = UserLimiter()
    async with server(conversations=1, messages=30) as fake:
        async with Client(fake.token, base_url=fake.url, limiter=limiter) as client:
            page = await client.get_messages(fake.conversation_ids[0])
    assert len(page.messages) == 20
    assert limiter.acquired == 1
    assert limiter.inner.book.learned


def test_a_cap_and_the_announced_budget_both_hold_in_every_window() -> None:
    # A cap of 30 per 10 s beside a server that allows 10 per 1 s: the same average
    # as neither, and neither may be broken in any window.
    book = LocalLimiter(RateLimit(30, 10.0)).book
    book.finish(0.0, reply(max_requests=10, interval=1.0), book.take(0.0))
    sends = [0.0]
    now = 0.0
    while now < 30.0:
        wait = book.wait_time(now)
        assert wait is not None
        if wait == 0.0:
            book.finish(now + 0.01, reply(max_requests=10, interval=1.0), book.take(now))
            sends.append(now)
        now += max(wait, 0.01) if wait else 0.0
    for start in sends:
        assert sum(1 for t in sends if start <= t < start + 1.0) <= 10
        assert sum(1 for t in sends if start <= t < start + 10.0) <= 30
    assert len(sends) >= 85  # both hold, and the cap is used (30 per 10 s, 3 windows)
    assert repr(LocalLimiter(RateLimit(30, 10.0))) == "LocalLimiter(30 per 10 s, in_flight=0)"


async def test_an_explicit_cap_does_not_override_a_tighter_server(server: ServerFactory) -> None:
    # The README's RateLimit(100, 10.0) against a server that allows 10 a second.
    async with server(
        conversations=12, messages=(20, 30), seed=15, rate_limit=RateLimit(10, 1.0)
    ) as fake:
        async with Client(fake.token, base_url=fake.url, rate_limit=RateLimit(100, 10.0)) as c:
            pages = sum([1 async for _ in c.fan_out_pages(fake.conversation_ids, page_size=10)])
    assert pages == fake.stats.served
    assert fake.stats.throttled == 0
    assert fake.stats.max_in_window <= 10


# -- max_wait: a bound on any wait for a slot (issue 15) ---------------------------


def test_the_estimated_wait_follows_the_place_in_the_queue() -> None:
    book = learned_book(5, 1.0).book  # the probe holds a slot until t=1.0
    for _ in range(4):
        book.finish(0.01, None, book.take(0.0))  # four more free at t=1.01
    assert book.wait_time(0.02) == pytest.approx(0.98)
    assert book.estimated_wait(0.02, 0) == pytest.approx(0.98)
    assert book.estimated_wait(0.02, 1) == pytest.approx(0.99)
    assert book.estimated_wait(0.02, 4) == pytest.approx(0.99)
    # The sixth of the queue waits for the first one's slot to serve again.
    assert book.estimated_wait(0.02, 5) == pytest.approx(1.98)
    assert book.estimated_wait(0.02, 12) == pytest.approx(2.99)
    # A request in flight frees its slot one interval after now at the earliest.
    book = learned_book(2, 1.0).book
    book.take(1.5)
    assert book.estimated_wait(1.5, 0) == 0.0  # the probe's slot freed at 1.0
    book.take(1.5)
    assert book.estimated_wait(1.6, 0) == pytest.approx(1.0)
    # A pause comes first.
    book.finish(1.7, reply(429, max_requests=2, interval=1.0, retry_after=3.0))
    assert book.estimated_wait(1.7, 0) == pytest.approx(3.0)


def test_a_free_slot_is_never_estimated_as_a_wait() -> None:
    book = learned_book(3, 1.0).book  # the probe holds one slot until t=1.0
    assert book.estimated_wait(0.0, 0) == 0.0
    assert book.estimated_wait(0.0, 1) == 0.0
    assert book.estimated_wait(0.0, 2) == pytest.approx(1.0)
    assert book.estimated_wait(5.0, 0) == 0.0
    assert book.estimated_wait(5.0, 2) == 0.0
    assert book.estimated_wait(5.0, 3) == pytest.approx(1.0)


async def test_max_wait_refuses_at_once_beyond_the_estimate() -> None:
    now = [0.0]
    limiter = LocalLimiter(RateLimit(2, 1.0), clock=lambda: now[0])
    book = limiter.book
    book.finish(0.0, reply(max_requests=2, interval=1.0), book.take(0.0))
    first = await limiter.acquire(max_wait=0.5)  # a free slot goes at once
    assert isinstance(first, Ticket)  # a slot was taken
    with pytest.raises(errors.RateLimitError) as refused:
        await limiter.acquire(max_wait=0.5)  # the next slot frees at t=1.0
    assert refused.value.status is None
    assert refused.value.retry_after == pytest.approx(1.0)
    assert "nothing was sent" in str(refused.value)
    assert book.in_flight == 1


async def test_max_wait_ends_a_wait_that_runs_longer_than_estimated() -> None:
    # The estimate says a slot frees at once after the reply; the reply never comes.
    limiter = LocalLimiter()
    await limiter.acquire()  # the probe, never answered
    start = time.monotonic()
    with pytest.raises(errors.RateLimitError) as late:
        await limiter.acquire(max_wait=0.2)
    assert 0.15 < time.monotonic() - start < 1.0
    assert late.value.status is None and late.value.retry_after is not None
    assert limiter._queued == 0 and limiter.book.in_flight == 1


async def test_max_wait_of_a_web_handler_fails_fast_instead_of_queueing(
    server: ServerFactory,
) -> None:
    # Issue 15: 200 requests at a 5-per-second budget, each allowed 1 s of waiting.
    async with server(conversations=200, messages=5, rate_limit=RateLimit(5, 1.0)) as fake:
        async with Client(fake.token, base_url=fake.url, max_wait=1.0) as client:
            await client.get_messages(fake.conversation_ids[0])  # the budget is learnt
            # Start from an empty window: whether the probe's slot frees just inside or
            # just outside the 1 s would otherwise decide one request either way.
            await asyncio.sleep(1.05)
            loop = asyncio.get_running_loop()

            async def timed(conversation: str) -> tuple[float, object]:
                start = loop.time()
                try:
                    outcome: object = await client.get_messages(conversation)
                except errors.RateLimitError as exc:
                    outcome = exc
                return loop.time() - start, outcome

            results = await asyncio.gather(*(timed(c) for c in fake.conversation_ids))
    served = [t for t, r in results if not isinstance(r, errors.RateLimitError)]
    refused = [(t, r) for t, r in results if isinstance(r, errors.RateLimitError)]
    assert fake.stats.throttled == 0
    assert 5 <= len(served) <= 15  # about two windows' worth within 1 s
    assert max(served) < 1.5
    assert all(r.status is None for _, r in refused)  # none reached the server
    fast = [t for t, _ in refused if t < 0.25]
    assert len(fast) >= 170  # refused at once, not after a wait
    assert max(t for t, _ in refused) < 1.5
    for _, error in refused:
        assert error.retry_after is not None and 0 < error.retry_after <= 200 / 5 + 2
    # A refused request leaves no place in the queue behind it: each is told when the
    # first slot not promised to a waiter frees, beyond its 1 s and within two windows.
    told = sorted(r.retry_after or 0 for t, r in refused if t < 0.25)
    assert told[0] > 1.0 and told[-1] < 2.1


def test_max_wait_must_be_sensible() -> None:
    with pytest.raises(ValueError, match="max_wait"):
        Client("t", max_wait=-1.0)


class BoundsLimiter:
    """A user's own limiter that records the bounds the client asks it to honour."""

    def __init__(self) -> None:
        self.inner = LocalLimiter()
        self.bounds: list[tuple[float | None, float | None]] = []

    async def acquire(
        self, *, max_wait: float | None = None, max_pause: float | None = None
    ) -> object:
        self.bounds.append((max_wait, max_pause))
        return await self.inner.acquire(max_wait=max_wait, max_pause=max_pause)

    async def release(self, ticket: object, reply: Reply | None) -> None:
        await self.inner.release(ticket, reply)


async def test_a_user_written_limiter_gets_both_bounds(server: ServerFactory) -> None:
    limiter = BoundsLimiter()
    async with server(conversations=1, messages=30) as fake:
        retry = RetryPolicy(max_retry_after=7.0)
        async with Client(fake.token, base_url=fake.url, limiter=limiter, retry=retry) as c:
            await c.get_messages(fake.conversation_ids[0])
        async with Client(
            fake.token, base_url=fake.url, limiter=limiter, retry=retry, max_wait=2.0
        ) as c:
            await c.get_messages(fake.conversation_ids[0])
    # max_wait is the client's (none, then 2 s); max_pause is RetryPolicy.max_retry_after.
    assert limiter.bounds == [(None, 7.0), (2.0, 7.0)]


def test_a_pause_stops_the_clock_of_neighbour_slots() -> None:
    book = learned_book(10, 1.0).book
    ticket = book.take(0.0)
    book.finish(0.1, reply(max_requests=10, interval=1.0, remaining=3), ticket)
    assert book.neighbour_slots(0.1) == 6  # held until 1.1 + 0.2
    ticket = book.take(0.5)
    refused = Reply(429, RateLimitHeaders(10, 1.0, 0, None, None), 2.0)
    book.finish(0.5, refused, ticket)
    # Nothing of ours renews them while paused (until 2.5) and the neighbour goes on
    # spending: they end the pause's length later than they would have, not at once
    # when it is over.
    assert book.blocked(0.5) == pytest.approx(("pause", 2.0))
    assert book.neighbour_slots(3.2) >= 6
    assert book.wait_time(2.5) == 0.0  # 10 - 6 - our 2 finished long ago: room


async def _queue_two_behind_the_probe(limiter: LocalLimiter) -> tuple[object, list[object]]:
    """The probe out, two callers queued behind it (waiting for its reply)."""
    probe = await limiter.acquire()
    got: list[object] = []

    async def wait_for_a_slot() -> None:
        got.append(await limiter.acquire())

    for _ in range(2):
        asyncio.get_running_loop().create_task(wait_for_a_slot())
    for _ in range(5):
        await asyncio.sleep(0)
    assert limiter._queued == 2 and not got
    return probe, got


def _finishes_at_once(limiter: LocalLimiter) -> bool:
    """Whether an acquire completes without a single trip through the event loop."""
    coro = limiter.acquire()
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


async def test_a_newcomer_goes_at_once_when_there_is_room_for_the_queue_too() -> None:
    # The probe's reply frees the queue: its first waiter is handed the queue's lock but
    # has not run yet. A newcomer with room for everyone must not queue behind it (it
    # did: once formed, such a queue never drained while requests kept coming).
    now = [0.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    probe, got = await _queue_two_behind_the_probe(limiter)
    await limiter.release(probe, reply(max_requests=10, interval=1.0))
    assert _finishes_at_once(limiter)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(got) == 2  # the queued ones lost nothing
    assert limiter.book.in_flight == 3 and limiter._queued == 0


async def test_a_newcomer_never_takes_a_slot_a_queued_caller_is_owed() -> None:
    # Room for the two queued callers only (the probe's slot is held for an interval):
    # the newcomer waits its turn.
    now = [0.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    probe, got = await _queue_two_behind_the_probe(limiter)
    await limiter.release(probe, reply(max_requests=3, interval=1.0))
    assert not _finishes_at_once(limiter)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(got) == 2
    assert limiter.book.in_flight == 2


def test_a_newcomer_waits_behind_a_queue_while_neighbour_slots_are_overdue() -> None:
    # The queue's estimate counts a neighbour slot past its end as free, but it is not
    # until a reply frees it: with callers queued, a newcomer does not go first then.
    now = [0.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    book = limiter.book
    book.finish(0.0, reply(max_requests=10, interval=1.0), book.take(0.0))
    book.finish(0.1, reply(max_requests=10, interval=1.0, remaining=3), book.take(0.0))
    assert book.neighbour_slots(0.1) == 6  # booked until 1.3
    assert not book.overdue(1.2) and book.overdue(1.5)
    assert book.wait_time(1.5) == 0.0  # nothing of ours out: a send may look
    assert limiter._may_pass(1.5)
    limiter._queued = 2
    assert not limiter._may_pass(1.5)
    assert limiter._may_pass(1.2)  # room for both and the newcomer, nothing overdue


def test_the_book_prunes_once_per_instant_and_again_when_the_window_shrinks() -> None:
    """Pruning is skipped when asked twice at one instant, but a budget announced with a
    shorter interval moves the horizon: the next prune at that same instant drops what
    the new window no longer holds (memory stays bounded by the current window).
    """
    from ghl_async.ratelimit import WindowBook

    book = WindowBook()  # HighLevel's default: 100 per 10 s
    book.finish(0.5, None, book.take(0.0))
    assert book.held(5.0) == 1  # still within 10 s
    ticket = book.take(5.0)
    shorter = Reply(200, RateLimitHeaders(max_requests=100, interval=1.0, remaining=98))
    book.finish(5.0, shorter, ticket)
    assert book.server == RateLimit(100, 1.0)
    # Same instant as the prune above: the reply at 0.5 has left the 1 s window.
    assert book.held(5.0) == 1
    assert len(book._finished) == 1
    assert book.held(6.5) == 0
    assert book._finished == []


async def test_every_resend_on_the_wire_is_counted_as_a_retry(server: ServerFactory) -> None:
    # Seven kinds, five of each, and one 429 (it pauses every request a second).
    kinds = ["reset", "truncate", "server_error", "html", "500", "502", "503"] * 5 + ["429"]
    roomy = RateLimit(1000, 1.0)
    async with server(conversations=60, messages=(20, 60), seed=9, rate_limit=roomy) as fake:
        for kind, conversation in zip(kinds, fake.conversation_ids, strict=False):
            fake.inject(kind, conversation_id=conversation)
        retry = RetryPolicy(backoff_base=0.001, backoff_cap=0.01)
        async with Client(fake.token, base_url=fake.url, retry=retry) as client:
            async for _ in client.fan_out_pages(fake.conversation_ids, page_size=20):
                pass
    injected = sum(fake.stats.faults.values())
    assert injected == len(kinds)
    # Each fault cost one more request; each is a retry, whoever sent it (the engine or
    # aiohttp's own resend on a pooled connection that was reset).
    assert client.stats.requests == fake.stats.requests
    assert client.stats.retries == client.stats.requests - client.stats.pages
    assert client.stats.retries >= injected
