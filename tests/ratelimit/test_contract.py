"""One contract for both limiters: every rule of ``docs/how-the-limiter-works.md``.

The rules exist twice, in Python (:class:`~ghl_async.ratelimit.WindowBook` behind
:class:`LocalLimiter`) and in Lua (:class:`RedisLimiter`, here on a real redis-server).
Every test below runs on both (ids ``local`` and ``redis``), through the
:class:`~ghl_async.ratelimit.Limiter` protocol only: ``acquire``, then ``release`` with a
:class:`Reply` built from the headers a server would send. A rule cannot change in one
language only without a test here failing.

Both run on real time: the Redis limiter's clock is Redis's ``TIME``, which cannot be
injected. Intervals are 0.075 to 0.5 s. The window is checked with no margin
at all, and so is the lower bound of every wait for a slot; an upper bound allows
:data:`LATE` for a busy machine, and no margin is anywhere near an interval, so a broken
rule fails.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol

import anyio
import pytest
from multidict import CIMultiDict

from ghl_async import LocalLimiter, RateLimit, Reply, errors
from ghl_async._sansio import RateLimitHeaders
from ghl_async.ratelimit import Limiter
from ghl_async.ratelimit.redis import RedisLimiter
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

# Redis keeps a pause's end in whole milliseconds of its TIME, so a pause may end up to
# 1 ms before Retry-After from our clock's reading of the reply (still after the server's
# own, which came first); a lower bound on a pause allows this much, and so does an
# estimate of a wait. Slots allow nothing: a slot freed early breaks the window.
TICK = 0.002
# How late a wake-up may be on a busy machine (an upper bound on a wait).
LATE = 0.2
# "At once": no wait, not even a short one.
AT_ONCE = 0.1


class MakeLimiter(Protocol):
    def __call__(self, rate_limit: RateLimit | None = None) -> Limiter: ...


@pytest.fixture(params=["local", "redis"])
async def limiter_factory(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimiter]:
    """Builds limiters of one kind, each with a budget of its own: ``rate_limit`` is a
    cap, ``None`` follows the server's announced budget (HighLevel's default until then).
    """
    if request.param == "local":

        def local(rate_limit: RateLimit | None = None) -> Limiter:
            return LocalLimiter(rate_limit)

        yield local
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    made: list[RedisLimiter] = []
    keys = itertools.count()

    def shared(rate_limit: RateLimit | None = None) -> Limiter:
        limiter = RedisLimiter(server.url, key=f"contract:{next(keys)}", rate_limit=rate_limit)
        made.append(limiter)
        return limiter

    yield shared
    for limiter in made:
        await limiter.aclose()


def answer(
    status: int = 200,
    *,
    budget: RateLimit | None = None,
    remaining: int | None = None,
    daily: int | None = None,
    retry_after: str | None = None,
) -> Reply:
    """The reply to one request, as the client builds it from the server's headers."""
    headers: CIMultiDict[str] = CIMultiDict()
    if budget is not None:
        headers["X-RateLimit-Max"] = str(budget.max_requests)
        headers["X-RateLimit-Interval-Milliseconds"] = str(round(budget.interval * 1000))
    if remaining is not None:
        headers["X-RateLimit-Remaining"] = str(remaining)
    if daily is not None:
        headers["X-RateLimit-Limit-Daily"] = "200000"
        headers["X-RateLimit-Daily-Remaining"] = str(daily)
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return Reply.from_headers(status, headers)


async def at_once(limiter: Limiter) -> object:
    """A slot that is free now (fails the test if none is)."""
    start = time.monotonic()
    with anyio.fail_after(1.0):  # a limiter that ignored max_wait would hang here
        ticket = await limiter.acquire(max_wait=0.0)
    assert time.monotonic() - start < AT_ONCE
    return ticket


async def free_now(limiter: Limiter, most: int = 40) -> list[object]:
    """Every slot free now, taken (an acquire that would wait is refused instead)."""
    tickets = []
    with anyio.fail_after(2.0):  # a limiter that ignored max_wait would hang here
        for _ in range(most):
            try:
                tickets.append(await limiter.acquire(max_wait=0.0))
            except errors.DailyLimitExceeded:
                raise
            except errors.RateLimitError:
                break
    return tickets


async def timed(acquire: Awaitable[object]) -> float:
    """When ``acquire`` got its slot (the test's monotonic clock), within 2 s."""
    with anyio.fail_after(2.0):
        await acquire
    return time.monotonic()


def next_midnight_utc() -> float:
    return time.time() + 86400 - time.time() % 86400


# -- the window guarantee ----------------------------------------------------------


async def send_concurrently(
    limiter: Limiter, sends: int, budget: RateLimit | None, *, workers: int = 8
) -> list[tuple[float, float]]:
    """``sends`` requests from ``workers`` tasks, each replied after a random round trip
    announcing ``budget`` (``None``: no rate-limit headers); returns each request's
    (sent, replied) on the test's clock: the server sees it at some moment in between.
    """
    rng = random.Random(sends)
    spans: list[tuple[float, float]] = []
    left = [sends]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            ticket = await limiter.acquire()
            sent = time.monotonic()  # no earlier than the limiter let it go
            await anyio.sleep(rng.uniform(0.0, 0.01))
            replied = time.monotonic()  # no later than the limiter hears of it
            spans.append((sent, replied))
            await limiter.release(ticket, answer(budget=budget))

    async with anyio.create_task_group() as tasks:
        for _ in range(workers):
            tasks.start_soon(worker)
    return spans


def most_in_any_window(spans: list[tuple[float, float]], interval: float) -> int:
    """The most requests a server could have counted in one window of ``interval``,
    each arriving anywhere between its send and its reply: requests ``k`` sent no later
    than some ``j`` and replied after ``j``'s send less the interval all fit one window
    (``j`` arriving at its send, the others at it or their reply).
    """
    most = 0
    for sent_j, _ in spans:
        edge = sent_j - interval
        most = max(most, sum(1 for sent, replied in spans if sent <= sent_j and replied > edge))
    return most


WINDOW_CASES: dict[str, tuple[RateLimit | None, RateLimit | None, int]] = {
    # (cap, server budget announced in every reply, sends)
    "announced budget": (None, RateLimit(5, 0.15), 12),
    "cap": (RateLimit(5, 0.15), None, 12),
    "cap and announced budget": (RateLimit(6, 0.3), RateLimit(2, 0.075), 12),
}


@pytest.mark.parametrize("case", WINDOW_CASES)
async def test_never_more_than_max_sends_in_any_window_of_interval(
    limiter_factory: MakeLimiter, case: str
) -> None:
    cap, server, sends = WINDOW_CASES[case]
    spans = await send_concurrently(limiter_factory(cap), sends, server)
    assert len(spans) == sends
    for constraint in (c for c in (cap, server) if c is not None):
        # At most max (the promise); and max is reached, so the check can fail.
        assert most_in_any_window(spans, constraint.interval) == constraint.max_requests


# -- the probe -----------------------------------------------------------------------


async def test_the_first_request_goes_alone_until_its_reply_then_the_announced_rate(
    limiter_factory: MakeLimiter,
) -> None:
    limiter = limiter_factory()
    probe = await at_once(limiter)
    went: list[float] = []
    async with anyio.create_task_group() as tasks:

        async def second() -> None:
            went.append(await timed(limiter.acquire()))

        tasks.start_soon(second)
        await anyio.sleep(0.05)
        assert went == []  # alone while the probe is out
        replied = time.monotonic()
        await limiter.release(probe, answer(budget=RateLimit(3, 0.15), remaining=2))
    assert went[0] - replied < AT_ONCE
    # The announced rate at once: 3 per 0.15 s, the probe's slot held since its reply.
    assert len(await free_now(limiter)) == 1
    fourth = await timed(limiter.acquire())
    assert 0.15 <= fourth - replied <= 0.15 + LATE


async def test_a_failed_probe_lets_the_next_request_go_alone(
    limiter_factory: MakeLimiter,
) -> None:
    limiter = limiter_factory()
    await limiter.release(await at_once(limiter), None)
    await at_once(limiter)
    assert await free_now(limiter) == []  # no reply has said anything yet


@pytest.mark.parametrize("cap", [None, RateLimit(3, 0.3)], ids=["default", "cap"])
async def test_a_reply_without_a_budget_ends_the_probe_and_the_cap_or_default_applies(
    limiter_factory: MakeLimiter, cap: RateLimit | None
) -> None:
    limiter = limiter_factory(cap)
    probe = await at_once(limiter)
    assert await free_now(limiter) == []
    await limiter.release(probe, answer())  # a reply with no rate-limit headers
    # Requests go side by side now, up to the cap (the probe's slot held) or, with no
    # cap, HighLevel's default of 100 per 10 s.
    expected = 2 if cap is not None else 40
    assert len(await free_now(limiter, most=40)) == expected


# -- a budget announced smaller ------------------------------------------------------


async def test_a_smaller_budget_announced_re_derives_every_slot_at_once(
    limiter_factory: MakeLimiter,
) -> None:
    limiter = limiter_factory()
    loose = RateLimit(10, 0.5)
    await limiter.release(await at_once(limiter), answer(budget=loose))
    for ticket in await free_now(limiter, most=3):
        await limiter.release(ticket, answer(budget=loose))
    await anyio.sleep(0.2)
    # Four slots replied 0.2 s ago: held under 10 per 0.5 s (5 free), free under 3 per
    # 0.15 s. The reply announcing that re-derives them at once: only its own is held.
    ticket = await at_once(limiter)
    replied = time.monotonic()
    await limiter.release(ticket, answer(budget=RateLimit(3, 0.15)))
    assert len(await free_now(limiter)) == 2
    fourth = await timed(limiter.acquire())
    assert 0.15 <= fourth - replied <= 0.15 + LATE


async def test_a_budget_announced_smaller_trims_the_neighbour_slots_to_it(
    limiter_factory: MakeLimiter,
) -> None:
    limiter = limiter_factory()
    hourly = RateLimit(50, 3600.0)
    await limiter.release(await at_once(limiter), answer(budget=hourly, remaining=49))
    spent, last = await at_once(limiter), await at_once(limiter)
    # Nothing left: 47 counted beyond ours, 48 slots reserved for an hour.
    await limiter.release(spent, answer(budget=hourly, remaining=0))
    assert await free_now(limiter) == []
    # Then 10 per 0.1 s: no more than 10 stay, none ending later than 0.1 s from now.
    await limiter.release(last, answer(budget=RateLimit(10, 0.1), remaining=9))
    await anyio.sleep(0.15)
    # Past their end with nothing of ours out, one send takes one's place; its reply
    # (sent after their end, showing no neighbour) frees one more.
    looking = await free_now(limiter)
    assert len(looking) == 1
    await limiter.release(looking[0], answer(budget=RateLimit(10, 0.1), remaining=9))
    # 10 - 2 left, one makes way: 7 and our one slot. Trimmed to end in 0.1 s but not
    # to 10, 46 left would hold the budget; not trimmed to end, 48 would for an hour.
    assert len(await free_now(limiter)) == 2


# -- a 429's pause -------------------------------------------------------------------

PAUSES: dict[str, tuple[RateLimit | None, RateLimit | None, str | None, float]] = {
    # (cap, announced budget, Retry-After, expected pause)
    "retry-after": (None, RateLimit(10, 0.15), "0.25", 0.25),
    "retry-after under a millisecond": (None, RateLimit(10, 0.15), "0.0004", 0.0004),
    "announced interval": (None, RateLimit(10, 0.15), None, 0.15),
    "cap interval": (RateLimit(10, 0.15), None, None, 0.15),
}


@pytest.mark.parametrize("case", PAUSES)
async def test_a_429_pauses_every_request_until_retry_after_or_one_interval(
    limiter_factory: MakeLimiter, case: str
) -> None:
    cap, budget, retry_after, pause = PAUSES[case]
    limiter = limiter_factory(cap)
    await limiter.release(await at_once(limiter), answer(budget=budget))
    refused = await at_once(limiter)
    replied = time.monotonic()
    await limiter.release(refused, answer(429, budget=budget, retry_after=retry_after))
    async with anyio.create_task_group() as tasks:
        went: list[float] = []

        async def waiter() -> None:
            went.append(await timed(limiter.acquire()))

        for _ in range(3):
            tasks.start_soon(waiter)
    for at in went:
        assert pause - TICK <= at - replied <= pause + LATE


async def test_a_pause_longer_than_max_pause_or_max_wait_raises_at_once_sending_nothing(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.15)
    limiter = limiter_factory()
    await limiter.release(await at_once(limiter), answer(budget=budget))
    refused = await at_once(limiter)
    replied = time.monotonic()
    await limiter.release(refused, answer(429, budget=budget, retry_after="0.25"))
    released = time.monotonic()
    for bounds in ({"max_pause": 0.1}, {"max_wait": 0.1}, {"max_wait": 5.0, "max_pause": 0.1}):
        start = time.monotonic()
        with pytest.raises(errors.RateLimitError) as caught:
            await limiter.acquire(**bounds)
        end = time.monotonic()
        assert end - start < AT_ONCE
        error = caught.value
        assert not isinstance(error, errors.DailyLimitExceeded)
        assert error.status is None and "nothing was sent" in str(error)
        # What is left of the pause, as of the moment the limiter looked.
        assert error.retry_after is not None
        assert 0.25 - (end - replied) - TICK <= error.retry_after
        assert error.retry_after <= 0.25 - (start - released) + TICK
    # A bound the pause fits in is waited out.
    went = await timed(limiter.acquire(max_pause=1.0))
    assert 0.25 - TICK <= went - replied <= 0.25 + LATE
    # None of the refused took a slot: the whole budget is free but this one.
    assert len(await free_now(limiter)) == budget.max_requests - 1


# -- the daily budget ----------------------------------------------------------------


async def test_a_spent_daily_budget_raises_at_once_with_or_without_bounds(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.3)
    limiter = limiter_factory()
    await limiter.release(await at_once(limiter), answer(budget=budget, daily=0))
    # No Retry-After: back at the next midnight UTC, beyond any of these bounds.
    for bounds in ({}, {"max_pause": 120.0}, {"max_wait": 120.0}):
        start = time.monotonic()
        with pytest.raises(errors.DailyLimitExceeded) as caught:
            await limiter.acquire(**bounds)
        assert time.monotonic() - start < AT_ONCE
        assert caught.value.status is None and "nothing was sent" in str(caught.value)
        assert caught.value.resets_at == pytest.approx(next_midnight_utc(), abs=5)


async def test_a_daily_429_with_retry_after_stops_until_then_and_a_bound_it_fits_waits(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.3)
    limiter = limiter_factory()
    ticket = await at_once(limiter)
    replied = time.monotonic()
    await limiter.release(ticket, answer(429, budget=budget, daily=0, retry_after="0.2"))
    for bounds in ({}, {"max_pause": 0.1}, {"max_wait": 0.1}):
        start = time.monotonic()
        with pytest.raises(errors.DailyLimitExceeded) as caught:
            await limiter.acquire(**bounds)
        assert time.monotonic() - start < AT_ONCE
        assert caught.value.resets_at == pytest.approx(time.time() + 0.2, abs=AT_ONCE)
    went = await timed(limiter.acquire(max_pause=1.0))
    assert 0.2 - TICK <= went - replied <= 0.2 + LATE


async def test_a_reply_saying_the_daily_budget_is_spent_without_a_reset_stops_until_midnight(
    limiter_factory: MakeLimiter,
) -> None:
    # A Reply built by hand (a transport of one's own) need not say when it resets.
    limiter = limiter_factory()
    spent = Reply(200, RateLimitHeaders(10, 0.3, None, 200000, 0))
    await limiter.release(await at_once(limiter), spent)
    with pytest.raises(errors.DailyLimitExceeded) as caught:
        await limiter.acquire(max_pause=120.0)
    assert caught.value.resets_at == pytest.approx(next_midnight_utc(), abs=5)


async def test_a_reply_with_daily_budget_left_lifts_the_stop(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.3)
    limiter = limiter_factory()
    await limiter.release(await at_once(limiter), answer(budget=budget))
    first, second = await at_once(limiter), await at_once(limiter)
    await limiter.release(first, answer(budget=budget, daily=0))
    with pytest.raises(errors.DailyLimitExceeded):
        await limiter.acquire()
    await limiter.release(second, answer(budget=budget, daily=5))  # the day came back
    await at_once(limiter)


# -- max_wait ------------------------------------------------------------------------


async def test_max_wait_refuses_at_once_when_the_soonest_slot_frees_too_late(
    limiter_factory: MakeLimiter,
) -> None:
    limiter = limiter_factory()
    probe = await at_once(limiter)
    replied = time.monotonic()
    await limiter.release(probe, answer(budget=RateLimit(2, 0.25)))
    released = time.monotonic()
    await at_once(limiter)  # both slots held: the probe's frees 0.25 s after its reply
    start = time.monotonic()
    with pytest.raises(errors.RateLimitError) as caught:
        await limiter.acquire(max_wait=0.1)
    end = time.monotonic()
    assert end - start < AT_ONCE  # refused, not slept on
    error = caught.value
    assert not isinstance(error, errors.DailyLimitExceeded)
    assert error.status is None and "nothing was sent" in str(error)
    # When the probe's slot frees, as of the moment the limiter looked.
    assert error.retry_after is not None
    assert 0.25 - (end - replied) <= error.retry_after <= 0.25 - (start - released) + TICK
    # A bound the soonest slot fits in is waited out.
    went = await timed(limiter.acquire(max_wait=1.0))
    assert 0.25 <= went - replied <= 0.25 + LATE


# -- no reply ------------------------------------------------------------------------


async def test_a_release_without_a_reply_holds_the_slot_one_interval_like_any(
    limiter_factory: MakeLimiter,
) -> None:
    limiter = limiter_factory()
    await limiter.release(await at_once(limiter), answer(budget=RateLimit(2, 0.15)))
    await anyio.sleep(0.15)  # the probe's slot is free again
    failed = await at_once(limiter)
    ended = time.monotonic()
    await limiter.release(failed, None)  # the send failed: the server may have seen it
    await at_once(limiter)
    third = await timed(limiter.acquire())
    assert 0.15 <= third - ended <= 0.15 + LATE


# -- beside a neighbour --------------------------------------------------------------

NEIGHBOUR = RateLimit(10, 0.4)


@pytest.mark.parametrize(
    ("remaining", "free"),
    [
        (9, 9),  # counted 1, the probe: alone, nothing is booked
        (8, 7),  # one neighbour request: reserved with its room, two slots
        (5, 4),  # four: five slots
        (0, 0),  # nine: the whole budget (never more than max), ours held besides
    ],
    ids=["alone", "one-request", "four", "all"],
)
async def test_a_reply_counting_more_than_ours_reserves_the_neighbours_share_and_one(
    limiter_factory: MakeLimiter, remaining: int, free: int
) -> None:
    limiter = limiter_factory()
    await limiter.release(await at_once(limiter), answer(budget=NEIGHBOUR, remaining=remaining))
    assert len(await free_now(limiter)) == free


async def test_replies_that_see_the_same_neighbour_reserve_it_once(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(20, 0.4)
    limiter = limiter_factory()
    # The probe's reply: 6 counted where 1 is ours, 5 of a neighbour's: 6 reserved.
    await limiter.release(await at_once(limiter), answer(budget=budget, remaining=14))
    # The next: 7 counted, ours 2 (the probe's and this): the same 5. Booked once, not
    # twice (12 reserved would leave 6).
    await limiter.release(await at_once(limiter), answer(budget=budget, remaining=13))
    assert len(await free_now(limiter)) == 20 - 2 - 6


async def test_a_burst_whose_replies_count_only_ours_books_nothing(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.4)
    limiter = limiter_factory()
    await limiter.release(await at_once(limiter), answer(budget=budget, remaining=9))
    burst = await free_now(limiter, most=5)
    # Replies in reverse order, each seeing the whole burst and the probe: all ours.
    for ticket in reversed(burst):
        await limiter.release(ticket, answer(budget=budget, remaining=10 - 6))
    # Only our six hold slots (a booking, two slots at least, would leave two).
    assert len(await free_now(limiter)) == 10 - 6


async def test_a_reservation_holds_an_interval_and_two_round_trips_after_its_reply(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.15)
    limiter = limiter_factory()
    probe = await at_once(limiter)
    await anyio.sleep(0.075)  # a round trip of 0.075 s
    # 6 counted where 1 is ours: 5 of a neighbour's, 6 reserved for 0.15 + 2 * 0.075 s.
    await limiter.release(probe, answer(budget=budget, remaining=4))
    replied = time.monotonic()
    await anyio.sleep(0.15 + 0.05)  # our probe's slot is free; the reservation holds
    assert time.monotonic() - replied < 0.15 + 0.15
    assert len(await free_now(limiter)) == 10 - 6


async def test_a_reply_in_a_burst_keeps_the_booked_slots_it_may_see_short(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.3)
    alone = answer(budget=budget, remaining=9)
    limiter = limiter_factory()
    probe = await at_once(limiter)
    # 6 counted where 1 is ours: 6 reserved until about 0.3 s from now.
    await limiter.release(probe, answer(budget=budget, remaining=4))
    booked = time.monotonic()
    first, second = await at_once(limiter), await at_once(limiter)
    await anyio.sleep(0.15)
    # 5 counted, ours 3 (the probe's, this and the second, sent during its round trip):
    # 2 of a neighbour's, 3 reserved. The second may not have been counted: one more of
    # the 6 is kept with them (4 renewed until 0.3 + 2 * 0.15 s from now), 2 keep their
    # end.
    await limiter.release(first, answer(budget=budget, remaining=5))
    await limiter.release(second, None)
    await anyio.sleep(booked + 0.32 - time.monotonic())  # past the 2's end
    # With nothing out, a send takes the place of one; its reply frees the other.
    await limiter.release(await at_once(limiter), alone)
    # Ours 3 held and the 4 renewed: three more (with 3 renewed and one past its end
    # making way, four).
    assert len(await free_now(limiter)) == 3


async def test_a_slot_past_its_end_waits_for_the_reply_to_a_later_send(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.15)
    alone = answer(budget=budget, remaining=9)
    limiter = limiter_factory()
    # 8 counted where 1 is ours (the probe's): 7 of a neighbour's, 8 reserved until
    # about 0.15 s from now.
    await limiter.release(await at_once(limiter), answer(budget=budget, remaining=2))
    before = await at_once(limiter)  # the one free slot, sent before their end
    await anyio.sleep(0.25)
    # Its reply cannot say the neighbour left after it was sent: all 8 stay. With
    # nothing out, a send takes the place of one; one more fits beside our 1 and 7.
    await limiter.release(before, alone)
    looking, other = await free_now(limiter)
    # A reply to a send made after their end frees one; a send with no reply, none.
    await limiter.release(looking, alone)
    await limiter.release(other, None)
    # Ours 3 held, 6 booked, one making way: two more (one freed too many: three).
    assert len(await free_now(limiter)) == 2


async def test_a_send_out_for_a_whole_interval_is_not_waited_for(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.15)
    limiter = limiter_factory()
    # 8 counted where 1 is ours: 8 reserved until about 0.15 s from now.
    await limiter.release(await at_once(limiter), answer(budget=budget, remaining=2))
    await at_once(limiter)  # hangs: never replied
    await anyio.sleep(0.25)
    # Past the 8 slots' end, with nothing of ours sent within an interval still out:
    # a send takes the place of one (waiting for the hung one would stall every send),
    # and one more fits beside it, the hung one and the 7.
    assert len(await free_now(limiter)) == 2


async def test_a_429s_pause_stops_the_clock_of_neighbour_slots(
    limiter_factory: MakeLimiter,
) -> None:
    budget = RateLimit(10, 0.15)
    limiter = limiter_factory()
    # 8 counted where 1 is ours: 8 reserved until about 0.15 s from now.
    await limiter.release(await at_once(limiter), answer(budget=budget, remaining=2))
    refused = await at_once(limiter)
    replied = time.monotonic()
    # A 429 (no Remaining: nothing new learned of the neighbour) pauses for 0.3 s. The
    # slots would end in the pause: their clock stops for its length instead, to about
    # 0.15 s after it.
    await limiter.release(refused, answer(429, budget=budget, retry_after="0.3"))
    went = await timed(limiter.acquire())
    assert 0.3 - TICK <= went - replied <= 0.3 + LATE
    # Still reserved, not past their end: none makes way for a send (that would be 2).
    assert len(await free_now(limiter)) == 1


# -- bounded -------------------------------------------------------------------------


async def test_huge_header_values_do_not_make_either_limiter_work_in_proportion(
    limiter_factory: MakeLimiter,
) -> None:
    limiter = limiter_factory()
    huge = CIMultiDict(
        {
            "X-RateLimit-Max": "999999999999",
            "X-RateLimit-Interval-Milliseconds": "1000",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Limit-Daily": "999999999999",
            "X-RateLimit-Daily-Remaining": "999999999999",
        }
    )
    start = time.monotonic()
    # Nothing left of a budget of a trillion: clamped to 10,000, all reserved.
    await limiter.release(await at_once(limiter), Reply.from_headers(200, huge))
    assert await free_now(limiter) == []
    assert time.monotonic() - start < 1.0
    # A Retry-After of 30,000 years: a week at most, refused at once.
    limiter = limiter_factory()
    huge["Retry-After"] = "999999999999"
    await limiter.release(await at_once(limiter), Reply.from_headers(429, huge))
    start = time.monotonic()
    with pytest.raises(errors.RateLimitError) as caught:
        await limiter.acquire(max_pause=60.0)
    assert time.monotonic() - start < AT_ONCE
    assert caught.value.retry_after == pytest.approx(7 * 86400.0, abs=1.0)
