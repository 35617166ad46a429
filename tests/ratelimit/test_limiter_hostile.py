"""The limiter against a hostile or broken server, and requests that never come back.

The neighbour rule of ``ghl_async/ratelimit.py`` keeps a booked neighbour slot past its
end until a reply can say the neighbour left. These tests try to make that stall the
client, blow up its state, or overspend: lying ``X-RateLimit-Remaining`` values, headers
that vanish, huge ``Retry-After``, replies out of order, transport errors, hung and
cancelled requests, a neighbour that stops abruptly. First on a number line (a
:class:`WindowBook`, a strict sliding-window server, seeded delays), then with real
sockets (the fake server) and a real redis-server.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_async import Client, LocalLimiter, RateLimit, Reply, errors
from ghl_async._sansio import RateLimitHeaders
from ghl_async.ratelimit import WindowBook
from ghl_async.ratelimit.book import Ticket
from ghl_async.ratelimit.redis import RedisLimiter
from ghl_async.testing import Faults
from tests.support.helpers import ServerFactory
from tests.support.redis_server import RedisServer

BUDGET, INTERVAL = 10, 1.0


def reply(remaining: int | None, status: int = 200, retry_after: float | None = None) -> Reply:
    return Reply(status, RateLimitHeaders(BUDGET, INTERVAL, remaining, None, None), retry_after)


# What a hostile server answers to one of our requests, given the true count in its
# window (ours and the neighbour's, this one included if accepted) and whether it was
# accepted: a Reply, None (a transport error) or ("hang", seconds) then a timeout.
Answer = Reply | None | tuple[str, float]
Server = Callable[[float, int, bool, random.Random], Answer]


def honest(t: float, count: int, accepted: bool, rng: random.Random) -> Answer:
    return reply(BUDGET - count, 200 if accepted else 429, None if accepted else INTERVAL)


@dataclass
class Run:
    sends: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # ours the server accepted
    refused: int = 0
    most_booked: int = 0
    most_state: int = 0  # the book's lists: finished, refused, and ours in flight

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.arrivals if start <= t < end)

    def longest_gap(self, start: float, end: float) -> float:
        times = [start, *(t for t in self.sends if start <= t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))


def drive(
    server: Server,
    *,
    seed: int = 0,
    duration: float = 12.0,
    workers: int = 8,
    trip: Callable[[random.Random], float] = lambda rng: 0.01 + rng.expovariate(1000),
    neighbour: Callable[[float], bool] = lambda t: False,
    neighbour_rate: float = 0.0,
    honest_from: float = float("inf"),
) -> Run:
    """Our ``workers`` senders with endless work against ``server`` (until
    ``honest_from``, then an honest one) on a strict sliding window of ``BUDGET`` per ``INTERVAL``;
    a neighbour sends ``neighbour_rate`` a second while ``neighbour(t)``.
    """
    rng = random.Random(seed)
    book = WindowBook()
    window: deque[float] = deque()  # arrivals the server accepted, ours and theirs
    run = Run()
    events: list[tuple[float, int, str, object]] = []
    order = itertools.count()
    wake = [float("inf")]

    def push(t: float, kind: str, payload: object = None) -> None:
        heapq.heappush(events, (t, next(order), kind, payload))

    def count(t: float) -> int:
        while window and window[0] <= t - INTERVAL:
            window.popleft()
        return len(window)

    def try_send(now: float) -> None:
        while now < duration and book.in_flight < workers:
            wait = book.wait_time(now)
            if wait is None:
                return
            if wait > 0:
                if now + wait < wake[0]:
                    wake[0] = now + wait
                    push(now + wait, "wake")
                return
            ticket = book.take(now)
            run.sends.append(now)
            push(now + trip(rng), "arrive", ticket)

    if neighbour_rate:
        push(0.0, "neighbour")
    push(0.0, "wake")
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "neighbour":
            if neighbour(now) and count(now) < BUDGET:
                window.append(now)
            if now < duration:
                push(now + 1 / neighbour_rate, "neighbour")
        elif kind == "arrive":
            accepted = count(now) < BUDGET
            if accepted:
                window.append(now)
                run.arrivals.append(now)
            else:
                run.refused += 1
            answer = (honest if now >= honest_from else server)(now, len(window), accepted, rng)
            if isinstance(answer, tuple):
                push(now + answer[1], "reply", (None, payload))
            else:
                push(now + trip(rng), "reply", (answer, payload))
        elif kind == "reply":
            answer, ticket = cast("tuple[Reply | None, Ticket]", payload)  # pushed by arrive
            book.finish(now, answer, ticket)
            run.most_booked = max(run.most_booked, book.neighbour_slots(now))
            state = len(book._finished) + len(book._refused) + book.in_flight
            run.most_state = max(run.most_state, state)
            try_send(now)
        else:
            if now >= wake[0]:
                wake[0] = float("inf")
            try_send(now)
    return run


def most_in_any_window(times: list[float]) -> int:
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - INTERVAL:
            start += 1
        most = max(most, end - start + 1)
    return most


# -- lying servers -------------------------------------------------------------------


@pytest.mark.parametrize("lie", [0, 1])
def test_a_server_that_always_says_nothing_is_left_slows_us_but_never_stalls(lie: int) -> None:
    # Alone on the server, which always says 0 (or 1) left and never refuses: every
    # reply blames a neighbour for the rest. We believe it (it is the server's count),
    # yet a send still goes at least once per interval and a few round trips, and the
    # moment the server tells the truth the whole budget is ours again.
    run = drive(lambda t, c, ok, rng: reply(lie), honest_from=6.0, duration=12.0)
    assert run.refused == 0
    assert run.most_booked <= BUDGET
    assert run.longest_gap(1.0, 6.0) <= INTERVAL + 0.2
    assert run.accepted_between(9.0, 12.0) >= 0.97 * BUDGET * 3


def test_headers_that_vanish_after_the_first_reply_leave_the_whole_budget() -> None:
    first = [True]

    def server(t: float, count: int, accepted: bool, rng: random.Random) -> Answer:
        if first[0]:
            first[0] = False
            return reply(BUDGET - count)
        return Reply(200 if accepted else 429, RateLimitHeaders(None, None, None, None, None))

    run = drive(server, duration=10.0)
    assert run.refused == 0 and run.most_booked == 0
    assert run.accepted_between(1.0, 10.0) >= 0.97 * BUDGET * 9


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    answers=st.lists(
        st.tuples(
            st.integers(0, BUDGET),  # Remaining
            st.sampled_from([200, 200, 200, 429]),
            st.one_of(st.none(), st.floats(0.01, 2.0)),  # Retry-After
            st.booleans(),  # headers present
        ),
        min_size=1,
        max_size=60,
    ),
    seed=st.integers(0, 2**16),
    slow=st.booleans(),
)
def test_whatever_the_server_says_the_window_holds_and_we_recover(
    answers: list[tuple[int, int, float | None, bool]], seed: int, slow: bool
) -> None:
    # Remaining jumping anywhere, 429s and 200s mixed at random whatever the true count,
    # headers missing, replies out of order (round trips of 1 ms or 300 ms); then the
    # server tells the truth. Our arrivals never exceed the budget in any window, the
    # book never holds more than the budget, and a few intervals after the lies stop
    # (the longest pause, its stopped clocks, an interval) the budget is ours again.
    script = itertools.cycle(answers)
    first = [True]

    def server(t: float, count: int, accepted: bool, rng: random.Random) -> Answer:
        if first[0]:  # the budget is known (else a 429's pause is HighLevel's 10 s)
            first[0] = False
            return honest(t, count, accepted, rng)
        remaining, status, retry_after, present = next(script)
        rate = RateLimitHeaders(BUDGET, INTERVAL, remaining, None, None)
        if not present:
            rate = RateLimitHeaders(None, None, None, None, None)
        return Reply(status, rate, retry_after if status == 429 else None)

    def trip(rng: random.Random) -> float:
        return rng.choice([0.001, 0.3]) if slow else 0.001 + rng.expovariate(2000)

    run = drive(server, seed=seed, trip=trip, honest_from=4.0, duration=14.0)
    assert most_in_any_window(run.arrivals) <= BUDGET
    assert run.most_booked <= BUDGET
    assert run.most_state <= 3 * BUDGET + 8
    # A pause of up to 2 s from a 429 just before 4 s, the slots it stopped ending up
    # to that much later, an interval: from 10 s on the budget is ours (each slot held
    # a round trip and an interval: over round trips of up to 600 ms, when ``slow``,
    # BUDGET in about 1.3 s).
    expected = 0.97 * BUDGET * 3 if not slow else BUDGET * 3 / 1.6
    assert run.accepted_between(11.0, 14.0) >= expected - 1


# -- requests that never come back -----------------------------------------------------


def booked_to_the_brim() -> WindowBook:
    """A book whose neighbour slots (9 of 10) end at 1.05; nothing of ours out."""
    book = WindowBook()
    book.finish(0.01, reply(BUDGET - 1), book.take(0.0))
    book.finish(0.03, reply(0), book.take(0.02))
    assert book.neighbour_slots(0.03) == BUDGET - 1
    return book


def test_a_hung_request_does_not_stall_every_send_behind_neighbour_slots() -> None:
    # One request hangs (the client's timeout is 30 s); the neighbour's 9 slots pass
    # their end. Only a reply to a later send could free them, and the hung request
    # plus the 9 fill the budget: before, nothing was sent until the hung request
    # timed out. Now a send takes a slot's place once the one out is an interval old.
    book = booked_to_the_brim()
    book.take(0.04)  # never replies
    assert book.wait_time(1.0) == pytest.approx(0.05)  # then the slots' end is due
    assert book.wait_time(1.06) == 0.0  # past their end, the hung one an interval old
    probe = book.take(1.1)
    assert book.neighbour_slots(1.1) == BUDGET - 2
    # Its reply, the neighbour gone, frees one more; the sends go on from there.
    book.finish(1.11, reply(BUDGET - 3), probe)
    assert book.neighbour_slots(1.11) == BUDGET - 3
    assert book.wait_time(1.11) == 0.0


def test_while_a_send_after_the_end_is_out_no_second_send_takes_a_place() -> None:
    book = booked_to_the_brim()
    book.take(0.04)  # hangs
    book.take(1.1)  # a send after the end takes a slot's place: its reply frees one more
    assert book.neighbour_slots(1.1) == BUDGET - 2
    wait = book.wait_time(1.2)  # the budget is full: wait for its reply...
    assert wait == pytest.approx(0.9)  # ...or until it too is an interval old
    # Hung for a whole interval: one more send takes a slot's place.
    assert book.wait_time(2.1) == 0.0


def test_transport_errors_only_never_stall() -> None:
    # Every send after the neighbour's slots were booked fails without a reply: each
    # failed send made way for one slot, so the sends go on, one after another.
    book = booked_to_the_brim()
    now, sent = 1.1, 0
    while now < 3.0:
        wait = book.wait_time(now)
        assert wait is not None and wait <= INTERVAL
        if wait == 0.0:
            ticket = book.take(now)
            sent += 1
            book.finish(now + 0.01, None, ticket)
        now += 0.02
    assert sent >= BUDGET - 1
    assert book.neighbour_slots(now) == 0


@pytest.mark.parametrize("seed", range(3))
def test_every_reply_failing_or_hanging_never_stalls(seed: int) -> None:
    # A neighbour spends half the budget; then the server breaks: a third of replies
    # never come (30 s hang, then a timeout), a third are transport errors; then it
    # heals and the neighbour has gone. Sends never stop for long while broken, and
    # within two intervals of healing the budget is ours (the hung requests hold
    # their own slot until they time out: 30 s, past the end of the run).
    def server(t: float, count: int, accepted: bool, rng: random.Random) -> Answer:
        if t < 3.0:
            return honest(t, count, accepted, rng)
        pick = rng.random()
        if pick < 0.33:
            return ("hang", 30.0)
        if pick < 0.66:
            return None
        return honest(t, count, accepted, rng)

    run = drive(
        server,
        seed=seed,
        workers=16,
        neighbour=lambda t: t < 3.0,
        neighbour_rate=BUDGET / 2,
        honest_from=6.0,
        duration=12.0,
    )
    assert run.refused <= 3
    assert run.longest_gap(3.0, 6.0) <= INTERVAL + 0.1
    # Hung ones out: at most 16 workers, so how many hang bounds how much we can send.
    assert run.accepted_between(9.0, 12.0) >= 1


@pytest.mark.parametrize("seed", range(4))
def test_a_neighbour_that_stops_with_one_worker_and_long_round_trips(seed: int) -> None:
    # One request at a time, 100 ms each way: the budget (10 a second) is at most 5
    # a second for us. A neighbour spends 8 a second and stops at 4 s; two intervals
    # and a few round trips later we run at our full rate again.
    run = drive(
        honest,
        seed=seed,
        workers=1,
        trip=lambda rng: 0.1 + rng.expovariate(1000),
        neighbour=lambda t: t < 4.0,
        neighbour_rate=8,
        duration=10.0,
    )
    assert run.refused <= 2
    assert run.accepted_between(6.6, 10.0) >= 0.95 * 3.4 * 5 - 1


@pytest.mark.parametrize("seed", range(3))
def test_a_bursty_neighbour_over_a_long_run_keeps_the_state_small(seed: int) -> None:
    # A neighbour that comes and goes in bursts for 60 s (on 2 s, off 3 s): the book's
    # lists stay within the budget and the senders, whatever the length of the run.
    run = drive(
        honest,
        seed=seed,
        workers=16,
        neighbour=lambda t: int(t) % 5 < 2,
        neighbour_rate=BUDGET * 0.6,
        duration=60.0,
    )
    assert run.most_booked <= BUDGET
    assert run.most_state <= 2 * BUDGET + 16 + 2
    assert most_in_any_window(run.arrivals) <= BUDGET


# -- pauses ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_huge_retry_after_is_refused_at_once_and_bounded_in_work() -> None:
    clock = [0.0]
    limiter = LocalLimiter(clock=lambda: clock[0])
    book = limiter.book
    book.finish(0.0, reply(BUDGET - 1), book.take(0.0))
    book.finish(0.01, reply(2), book.take(0.005))  # a neighbour: 8 slots booked
    week = 7 * 86400.0
    book.finish(0.02, reply(0, 429, week), book.take(0.015))
    with pytest.raises(errors.RateLimitError) as caught:
        await limiter.acquire(max_pause=120.0)
    assert caught.value.retry_after == pytest.approx(week + 0.02, abs=0.01)
    with pytest.raises(errors.RateLimitError):
        await limiter.acquire(max_wait=1.0)
    assert book.neighbour_slots(0.02) <= BUDGET
    # A second huge Retry-After stops the clocks for its extra length only.
    late = book.take(0.01)  # sent before the first 429, refused after it
    book.finish(0.03, reply(0, 429, week), late)
    assert book.neighbour_slots(0.03) <= BUDGET
    assert book.blocked(0.03) == pytest.approx(("pause", week), abs=0.02)


# -- real sockets ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_slow_request_beside_booked_slots_does_not_stall_the_others(
    server: ServerFactory,
) -> None:
    # The fake server's budget is 10 per 0.5 s; a neighbour spent 8 of it, seen by a
    # reply with nothing left: 9 slots booked (with one of room). One request, sent
    # before their end, is held 4 s by the server; the rest are fast.
    # Before, every other request waited for it (the hung one and the 9 fill the
    # budget; only a reply could free them); now they go on within a second or so.
    async with server(
        conversations=4,
        messages=(1, 1),
        seed=3,
        rate_limit=RateLimit(10, 0.5),
        faults=Faults(slow_seconds=4.0),
    ) as fake:
        ids = fake.conversation_ids
        async with Client(fake.token, base_url=fake.url, timeout=10.0) as client:
            await client.get_messages(ids[0])  # learn the budget
            await asyncio.sleep(0.2)
            fake.spend(8)
            await client.get_messages(ids[1])  # sees the neighbour: nothing left
            limiter = client.limiter
            assert isinstance(limiter, LocalLimiter)
            assert limiter.book.neighbour_slots(asyncio.get_running_loop().time()) >= 8
            fake.inject("slow", conversation_id=ids[2])
            loop = asyncio.get_running_loop()
            slow = asyncio.create_task(client.get_messages(ids[2]))
            await asyncio.sleep(0.05)
            start = loop.time()
            for _ in range(3):
                await client.get_messages(ids[3])
            took = loop.time() - start
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
    assert took < 2.5, took
    assert fake.stats.throttled == 0


@pytest.mark.anyio
async def test_cancelled_sends_give_their_slots_back(server: ServerFactory) -> None:
    # Requests cancelled while on the wire (the server holds them) release their ticket:
    # nothing of ours stays "in flight", so nothing waits for a reply that never comes.
    async with server(
        conversations=6, messages=(1, 1), seed=5, rate_limit=RateLimit(10, 0.5)
    ) as fake:
        ids = fake.conversation_ids
        async with Client(fake.token, base_url=fake.url, timeout=10.0) as client:
            await client.get_messages(ids[0])
            for conversation in ids[1:]:
                fake.inject("slow", conversation_id=conversation)
            tasks = [asyncio.create_task(client.get_messages(c)) for c in ids[1:]]
            await asyncio.sleep(0.2)
            limiter = client.limiter
            assert isinstance(limiter, LocalLimiter)
            assert limiter.book.in_flight == 5
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert limiter.book.in_flight == 0
            await client.get_messages(ids[0])  # and the next goes at once


# -- Redis -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_crashed_process_does_not_stall_the_others_behind_neighbour_slots(
    redis_server: RedisServer,
) -> None:
    # Process A takes a slot and dies (never releases: in flight for 5 s). B's reply
    # saw a neighbour fill the rest: 9 slots booked, ending in about 0.2 s. Only a
    # reply to a later send frees them, and A's slot plus the 9 fill the budget:
    # before, B waited out A's in-flight time. Now a send goes once A's is an
    # interval old.
    rate = RateLimit(10, 0.2)
    a = RedisLimiter(redis_server.url, key="crash", rate_limit=rate, in_flight_timeout=5.0)
    b = RedisLimiter(redis_server.url, key="crash", rate_limit=rate, in_flight_timeout=5.0)
    redis = aioredis.Redis.from_url(redis_server.url)
    loop = asyncio.get_running_loop()
    try:
        ticket = await b.acquire()
        await b.release(ticket, Reply(200, RateLimitHeaders(10, 0.2, 9, None, None)))
        await asyncio.sleep(0.25)  # its slot frees
        await a.acquire()  # and crashes
        ticket = await b.acquire()
        await b.release(ticket, Reply(200, RateLimitHeaders(10, 0.2, 0, None, None)))
        assert await redis.zcard(b.keys[4]) == 9
        start = loop.time()
        ticket = await b.acquire(max_wait=2.0)
        assert loop.time() - start < 1.5  # A's slot an interval old: 0.2 s
        await b.release(ticket, Reply(200, RateLimitHeaders(10, 0.2, 8, None, None)))
    finally:
        await a.aclose()
        await b.aclose()
        await redis.aclose()


def test_a_budget_that_shrinks_trims_the_booked_slots() -> None:
    # A server announces 50 per hour with nothing left (50 slots booked for an hour),
    # then 10 per 0.2 s: no more than the new budget stay, ending within its interval.
    book = WindowBook()
    book.finish(0.01, Reply(200, RateLimitHeaders(50, 3600.0, 49, None, None)), book.take(0.0))
    spent, last = book.take(0.02), book.take(0.02)
    book.finish(0.03, Reply(200, RateLimitHeaders(50, 3600.0, 0, None, None)), spent)
    assert book.neighbour_slots(0.03) == 48
    book.finish(0.05, Reply(200, RateLimitHeaders(10, 0.2, 9, None, None)), last)
    assert book.neighbour_slots(0.05) <= 10
    wait = book.wait_time(0.3)
    assert wait is not None and wait < 1.0


@pytest.mark.anyio
async def test_a_budget_that_shrinks_trims_the_booked_slots_in_redis_too(
    redis_server: RedisServer,
) -> None:
    limiter = RedisLimiter(redis_server.url, key="shrink")
    redis = aioredis.Redis.from_url(redis_server.url)
    loop = asyncio.get_running_loop()
    try:
        hour = RateLimitHeaders(50, 3600.0, 49, None, None)
        await limiter.release(await limiter.acquire(), Reply(200, hour))
        spent, last = await limiter.acquire(), await limiter.acquire()
        await limiter.release(spent, Reply(200, RateLimitHeaders(50, 3600.0, 0, None, None)))
        assert await redis.zcard(limiter.keys[4]) == 48
        await limiter.release(last, Reply(200, RateLimitHeaders(10, 0.2, 9, None, None)))
        assert await redis.zcard(limiter.keys[4]) <= 10
        await asyncio.sleep(0.3)
        start = loop.time()
        await limiter.acquire(max_wait=2.0)
        assert loop.time() - start < 1.0
    finally:
        await limiter.aclose()
        await redis.aclose()
