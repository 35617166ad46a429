"""The neighbour estimate on a number line: a seeded simulation, no sockets, no sleeping.

A strict sliding-window server allows ``BUDGET`` requests in any ``INTERVAL``. Our
limiter (a :class:`WindowBook`) drives ``WORKERS`` senders with endless work; each
request travels to the server and back with random delays, so the server sees it at a
moment between its send and its reply. A neighbour spends the same budget in one of
several patterns. The tests pin the rule of ``ratelimit.py`` (a booking never exceeds
what the neighbour really had in the server's window) and
the outcome the issue asks for: few 429s, most of what the neighbour leaves used.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from ghl_async import RateLimit, Reply
from ghl_async._sansio import RateLimitHeaders
from ghl_async.ratelimit import WindowBook
from ghl_async.ratelimit.book import Ticket

BUDGET, INTERVAL = 25, 1.0
WORKERS = 16


def steady(rate: float, until: float = float("inf")) -> Callable[[random.Random], Iterator[float]]:
    """A neighbour sending ``rate`` requests a second, a little jittered, until ``until``."""

    def times(rng: random.Random) -> Iterator[float]:
        t = rng.random() / rate
        while t < until:
            yield t
            t += (0.8 + 0.4 * rng.random()) / rate

    return times


def on_schedule(rate: float, start: float) -> Callable[[random.Random], Iterator[float]]:
    """A neighbour that starts at ``start`` and then sends ``rate`` a second, exactly."""

    def times(rng: random.Random) -> Iterator[float]:
        return (start + n / rate for n in itertools.count())

    return times


def bursty(size: int, every: float) -> Callable[[random.Random], Iterator[float]]:
    """A neighbour sending ``size`` requests at once every ``every`` seconds."""

    def times(rng: random.Random) -> Iterator[float]:
        t = rng.random() * every
        while True:
            for i in range(size):
                yield t + i * 0.001
            t += every

    return times


@dataclass
class Outcome:
    sent: int = 0
    throttled: int = 0
    # (arrival time, accepted) of ours and the neighbour's
    ours: list[tuple[float, bool]] = field(default_factory=list)
    theirs: list[tuple[float, bool]] = field(default_factory=list)
    most_booked: int = 0

    def accepted_between(self, who: list[tuple[float, bool]], start: float, end: float) -> int:
        return sum(1 for t, ok in who if ok and start <= t < end)

    def share_used(self, start: float, end: float) -> float:
        """Our accepted requests over what the neighbour left of the budget."""
        left = BUDGET / INTERVAL * (end - start) - self.accepted_between(self.theirs, start, end)
        return self.accepted_between(self.ours, start, end) / left


def simulate(
    seed: int,
    neighbour: Callable[[random.Random], Iterator[float]],
    *,
    duration: float = 20.0,
    latency: float = 0.02,
    jitter: float = 0.002,
    busy: float = 0.0,
    start: float = 0.0,
    whole_seconds: bool = False,
) -> Outcome:
    """One run: each one-way trip takes ``latency`` plus an exponential ``jitter``.

    ``busy``: event-loop time to handle one reply. Replies that arrive together are
    handled one after another, each that much later than the last (a burst of 16 is
    handled over 16 ``busy``): the book learns of them late, as a busy loop does.
    ``start``: when we send the first request (a neighbour may be spending already).
    ``whole_seconds``: ``Retry-After`` in whole seconds, at least one, as HighLevel and
    the fake server send it (else the exact time until the window frees).
    """
    rng = random.Random(seed)
    loop_free = [0.0]  # when the event loop is done with the replies before

    def trip() -> float:
        return latency + rng.expovariate(1 / jitter)

    book = WindowBook()  # the default 100 / 10 s until the first reply says 25 / 1 s
    window: deque[tuple[float, str, float]] = deque()  # accepted: (arrival, who, sent)
    outcome = Outcome()
    events: list[tuple[float, int, str, object]] = []
    order = itertools.count()

    def push(t: float, kind: str, payload: object = None) -> None:
        heapq.heappush(events, (t, next(order), kind, payload))

    def count(t: float) -> None:
        while window and window[0][0] <= t - INTERVAL:
            window.popleft()

    neighbour_times = neighbour(rng)
    first = next(neighbour_times, None)
    if first is not None:
        push(first, "neighbour")
    wake_at = [float("inf")]

    def try_send(now: float) -> None:
        while now < duration and book.in_flight < WORKERS:
            wait = book.wait_time(now)
            if wait is None:
                return
            if wait > 0:
                if now + wait < wake_at[0]:
                    wake_at[0] = now + wait
                    push(now + wait, "wake")
                return
            ticket = book.take(now)
            outcome.sent += 1
            push(now + trip(), "arrive", (now, ticket))

    push(start, "wake")
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "neighbour":
            count(now)
            accepted = len(window) < BUDGET
            if accepted:
                window.append((now, "theirs", now))
            outcome.theirs.append((now, accepted))
            later = next(neighbour_times, None)
            if later is not None and later < duration + 5:
                push(later, "neighbour")
        elif kind == "arrive":
            sent, ticket = cast("tuple[float, Ticket]", payload)  # pushed by try_send
            count(now)
            neighbours = sum(1 for _, who, _ in window if who == "theirs")
            accepted = len(window) < BUDGET
            if accepted:
                window.append((now, "ours", sent))
            outcome.ours.append((now, accepted))
            remaining = BUDGET - len(window)
            status = 200 if accepted else 429
            retry_after = None if accepted else window[0][0] + INTERVAL - now
            if retry_after is not None and whole_seconds:
                retry_after = max(1, math.ceil(retry_after))
            reply = Reply(
                status,
                RateLimitHeaders(BUDGET, INTERVAL, remaining, None, None),
                retry_after if retry_after and retry_after > 0 else None,
            )
            back = now + trip()
            push(back, "reply", (reply, ticket, neighbours))
        elif kind == "reply" and busy:
            handled = max(now, loop_free[0]) + busy
            loop_free[0] = handled
            push(handled, "handle", payload)
        elif kind in ("reply", "handle"):
            reply, ticket, neighbours = cast("tuple[Reply, Ticket, int]", payload)  # by arrive
            before = book.neighbour_slots(now)
            book.finish(now, reply, ticket)
            booked = book.neighbour_slots(now) - before
            # The rule's promise: never more than the neighbour had in the window.
            # The rule's promise: never more than the neighbour had, and one of room.
            assert booked <= neighbours + 1, (now, booked, neighbours)
            outcome.most_booked = max(outcome.most_booked, book.neighbour_slots(now))
            if reply.status == 429:
                outcome.throttled += 1
            try_send(now)
        else:
            if now >= wake_at[0]:
                wake_at[0] = float("inf")
            try_send(now)
    return outcome


def refused_share(outcome: Outcome) -> float:
    return sum(1 for _, ok in outcome.theirs if not ok) / max(1, len(outcome.theirs))


@pytest.mark.parametrize("latency", [0.002, 0.02])
@pytest.mark.parametrize("seed", range(4))
def test_alone_the_whole_budget_is_used_without_a_429(seed: int, latency: float) -> None:
    outcome = simulate(seed, lambda rng: iter(()), latency=latency, jitter=latency / 10)
    assert outcome.throttled == 0
    assert outcome.share_used(2.0, 18.0) >= 0.97
    assert outcome.most_booked == 0  # no phantom neighbour


@pytest.mark.parametrize("seed", range(6))
def test_beside_a_steady_neighbour_on_a_local_network(seed: int) -> None:
    outcome = simulate(seed, steady(BUDGET * 0.25), latency=0.002, jitter=0.0002)
    assert outcome.throttled <= 0.01 * outcome.sent
    assert outcome.share_used(2.0, 18.0) >= 0.95
    assert outcome.most_booked <= BUDGET // 2


@pytest.mark.parametrize("seed", range(6))
def test_beside_a_steady_neighbour_over_a_40_ms_round_trip(seed: int) -> None:
    outcome = simulate(seed, steady(BUDGET * 0.25))
    # The estimate falls short by our requests whose slot frees within a round trip
    # of a send: a few 429s more, and the neighbour keeps most of what it asks for.
    assert outcome.throttled <= 0.035 * outcome.sent
    assert outcome.share_used(2.0, 18.0) >= 0.92
    assert refused_share(outcome) <= 0.5


@pytest.mark.parametrize("latency", [0.002, 0.02])
@pytest.mark.parametrize("seed", range(4))
def test_beside_a_bursty_neighbour(seed: int, latency: float) -> None:
    # The same quarter of the budget, in bursts of 12 every 2 s: a burst after our
    # last look can take the window before we know. The 429 that follows pauses us and
    # reserves the burst; few, and most of the rest used.
    outcome = simulate(seed, bursty(12, 2.0), latency=latency, jitter=latency / 10)
    assert outcome.throttled <= 0.035 * outcome.sent
    assert outcome.share_used(2.0, 18.0) >= 0.95


@pytest.mark.parametrize("latency", [0.002, 0.02])
@pytest.mark.parametrize("seed", range(4))
def test_a_neighbour_that_stops_is_forgotten(seed: int, latency: float) -> None:
    outcome = simulate(seed, steady(BUDGET * 0.5, until=8.0), latency=latency, jitter=latency / 10)
    assert outcome.throttled <= 0.025 * outcome.sent
    assert outcome.share_used(2.0, 8.0) >= 0.95
    # Two intervals and a round trip after it stopped, the whole budget is ours again.
    # (Less a hair: in floating point 18.1 - 10.1 is a little over 8 s, so 194 of
    # the 200 requests would read as just under 97%.)
    assert outcome.share_used(10.0 + 0.1, 18.1) >= 0.97 - 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_a_neighbour_that_starts_after_us(seed: int) -> None:
    # We hold the whole budget when it starts: it shows first as one request that
    # slipped in where one of our slots freed at the server before our book. That one
    # request is reserved (with room), so its next ones find the room instead of
    # taking one of ours (without it: up to 3.7% of ours answered 429 here).
    outcome = simulate(seed, on_schedule(BUDGET * 0.25, 1.5 + seed * 0.1), duration=8.0)
    assert outcome.throttled <= 0.03 * outcome.sent
    assert outcome.share_used(0.0, 8.0) >= 0.95


def test_the_estimate_is_a_lower_bound_short_by_one_round_trip_at_most() -> None:
    """Sends every 0.1 s, 20 ms each way; a neighbour has 3 in the server's window."""
    book = WindowBook(RateLimit(10, 1.0))
    book.finish(0.0, Reply(200, RateLimitHeaders(10, 1.0, 9, None, None)), book.take(0.0))
    arrivals = [0.0]
    for step in range(1, 30):
        sent = step * 0.1
        arrival = sent + 0.02
        arrivals.append(arrival)
        ticket = book.take(sent)
        in_window = sum(1 for a in arrivals if a > arrival - 1.0)
        remaining = 10 - in_window - (3 if step >= 15 else 0)  # the neighbour from 1.5 s
        now = sent + 0.04
        book.finish(now, Reply(200, RateLimitHeaders(10, 1.0, remaining, None, None)), ticket)
        held = book.neighbour_slots(now)
        if step < 15:
            assert held == 0  # ours alone: nothing is blamed on a neighbour
        else:
            # 3, less our one request whose slot frees within the round trip of the
            # send (the server forgot it, our book not yet), plus one slot of room.
            assert held == 3 - 1 + 1, (step, held)


def test_bookings_stay_within_the_budget_whatever_the_server_says() -> None:
    book = WindowBook(RateLimit(10_000, 1.0))
    for step in range(200):
        now = step * 0.001
        ticket = book.take(now)
        # A server that says nothing is left, every time: the book never grows past
        # the budget it announced.
        book.finish(now, Reply(200, RateLimitHeaders(50, 1.0, 0, None, None)), ticket)
        assert book.neighbour_slots(now) <= 50


@pytest.mark.parametrize("seed", range(8))
def test_beside_a_steady_neighbour_with_a_busy_event_loop(seed: int) -> None:
    # 2 ms each way, but 3 ms of event-loop time per reply: a burst of 16 replies is
    # learnt over 48 ms, so ``H_r`` counts some of ours the server had already
    # forgotten and the estimate runs low. Suspected of the benchmark's rare 429s
    # beside a neighbour; on the number line the rule holds here as it is (0.2-1.8% of
    # ours refused for 3 to 20 ms a reply), so that is not the whole story (the next
    # test is).
    outcome = simulate(seed, steady(BUDGET * 0.25), latency=0.002, jitter=0.0002, busy=0.003)
    assert outcome.throttled <= 0.01 * outcome.sent
    assert outcome.share_used(2.0, 18.0) >= 0.92


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize(("latency", "busy"), [(0.001, 0.0005), (0.0005, 0.001), (0.0005, 0.002)])
def test_a_neighbour_spending_before_we_start_with_whole_second_pauses(
    seed: int, latency: float, busy: float
) -> None:
    # The benchmark's setting: a neighbour on a fixed schedule is spending when we
    # start; replies are handled late on a busy loop; Retry-After is whole seconds. Our
    # sends come in bursts (slots free an interval after their replies), and a reply in
    # a burst sees a neighbour short by our sends the server had not seen yet and our
    # slots it had forgotten: such replies keep the slots booked by earlier ones (up to
    # that shortfall), and a slot past its end stays while a send before its end is out.
    # A 429's pause stops the bookings' clocks, so that after it the sends do not refill
    # the neighbour's share at once: before, one 429 led to a 429 every second (up to
    # 7% of ours refused on these seeds).
    outcome = simulate(
        seed,
        on_schedule(BUDGET * 0.25, 0.0),
        latency=latency,
        jitter=latency / 10,
        busy=busy,
        start=2.0 + seed * 0.013,
        duration=10.0,
        whole_seconds=True,
    )
    assert outcome.throttled <= 0.01 * outcome.sent
    assert outcome.share_used(3.0, 10.0) >= 0.92
