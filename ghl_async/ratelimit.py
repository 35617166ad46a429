"""Rate limiting: the budget, the ``Limiter`` protocol, and the in-process limiter.

**The window guarantee.** A budget is a set of constraints ``(max, interval)``: the
server's announced budget, and any cap the caller set (``RateLimit(100, 10.0)``). For
each constraint, at most ``max`` requests reach the server in ANY window of
``interval`` seconds, whether the server counts in fixed or sliding windows, whatever
the network delay. All constraints hold at once: a cap of 100 per 10 s next to a server
that allows 10 per 1 s lets 10 go in any second and 100 in any 10 s, never 100 at once.
A plain token or leaky bucket (``aiolimiter.AsyncLimiter(100, 10)``) admits a burst of
100 and then 10 a second, about 200 in the first 10 seconds; this one does not.

How: for each constraint, every request holds a *slot* from the moment it is allowed
to send until its reply headers arrive (or it fails), and for one ``interval`` after
that. A new request is sent only while fewer than ``max`` slots of every constraint are
held. The server saw each request at some moment between its send and its reply, so
any server window of ``interval`` that contains ``max + 1`` arrivals would have had all
of them holding a slot when the last one was sent, which the rule forbids. No margin for
network delay is needed; the price is one round trip per window. Slots are kept as send
and reply times, not as expiries, so when a reply announces a different budget every
slot is re-derived under it at once: the limiter runs at the announced rate from the
first reply on, with no window of slack.

**Beside a neighbour.** Others may spend the same budget (a webhook handler, a second
app instance, a sync job). Only the server's count says so. When the reply of ``r``
(sent at ``s_r``, replied at ``f_r``) says ``Remaining = R`` for the server's constraint
``(M, I)``, the server had counted ``C_r = M - R`` requests in its window
``(a_r - I, a_r]`` when ``r`` arrived at ``a_r`` (``r`` included unless refused). Compare
like with like: the neighbour's share is ``C_r`` less every request of ours the server
*could* have counted by then. The rule::

    ours_r   = H_r + [r was accepted] + (our sends after s_r and before f_r)
               where H_r = our slots held at s_r (in flight, or replied after
               s_r - I), less those the server refused
    theirs_r = C_r - ours_r
    if theirs_r > 0:
        reserve min(theirs_r + 1, M) neighbour slots until f_r + I + 2 (f_r - s_r),
        keeping up to u_r more of the slots already booked (never adding them)
        where u_r = (our sends after s_r and before f_r)
                  + (ours_r less our slots held at f_r, not refused)
    a slot past its end stays booked until the reply of a send made after its end
        frees it (one per reply); with nothing of ours out sent within I, a send
        takes its place
    a 429's pause stops the clock of every slot that would end during it

*It never blames the neighbour for our own requests.* Write ``C_r = O_r + N_r``: ours
and the neighbour's in the server's window. One of ours, ``q``, counted there was not
refused and was sent before ``r``'s reply. If it was sent after ``s_r``, it is one of
our sends since. If it was sent no later than ``s_r``, it arrived after
``a_r - I >= s_r - I`` and replied after it arrived, so at ``s_r`` it was in flight or
had replied after ``s_r - I``: it is in ``H_r`` (or is ``r``). So ``O_r <= ours_r`` and
``theirs_r <= N_r``, whatever the delays, the clocks' order of arrival or a busy event
loop: no reply books more than the neighbour really had (plus the one slot of room
below), and alone nothing is ever booked. Comparing ``Remaining`` with the limiter's
count as of the reply, as a count of "now" does, is not like with like: it mixes in
requests the server had not seen, and misses when the neighbour's requests age out.
The estimate falls short of ``N_r`` by our own requests the server had already
forgotten or not yet seen: those whose slot frees within a round trip after ``s_r``,
and those sent during ``r``'s round trip that arrived after it. Over a 40 ms round
trip the simulation shows it (``tests/test_limiter_sim.py``); on a local network it is
little, except within a burst of our sends (below). Of a burst of replies, the last to
arrive sees the whole burst.

*It holds the neighbour's share once, for as long as it is seen.* A reservation moves
the latest booked slots to its end and adds only what is missing, so replies that see
the same neighbour requests book them once. It lasts one interval and two round trips
after the reply, and past that until a reply can say the neighbour is gone. Our slots
free one interval after their replies, so our sends come in bursts, and a reply in a
burst sees the neighbour short: by ``u_r``, our requests of ``ours_r`` the server may
not have counted (sent during ``r``'s round trip, perhaps not yet arrived; or freed in
our book during it, perhaps forgotten at the server already). Such a reply keeps up to
``u_r`` more of the slots earlier replies booked, but adds only what it proves. A slot
whose end passes while our sends go out is not freed by their replies either (sent
before its end, they looked at a window it was still in): only a reply to a send made
after its end frees it, one slot per reply, if that reply does not renew it; with
nothing of ours out, one send takes the place of one such slot and looks. A send out
for a whole interval is not waited for (a hung request, a crashed process): its reply
may be the client's timeout away, and meanwhile no reply could free the slots, so every
send would stall behind a neighbour long gone (``tests/test_limiter_hostile.py``); one
send per interval takes a slot's place then. Before, a
booking simply ended at its time: the burst it let through refilled the neighbour's
share at once and the server refused a few of ours; on the number line, a neighbour
already spending when we start, replies handled late by a busy loop and ``Retry-After``
in whole seconds cost up to 8% of ours in 429s (``tests/test_limiter_sim.py``; 0 now).
A 429's pause stops the clock of every slot that would end during it: nothing of ours
is sent to renew it while paused, and the neighbour goes on spending; a booking that
lapsed in the pause let the sends after it fill the whole window, the server refused
the neighbour's share of them and paused us again, a 429 every second (measured beside
a real neighbour: 7% of ours refused in a bad run). A neighbour that stops ages out of
the server's window within ``I``; replies after that see nothing to renew, so it costs
nothing two intervals and two round trips after it stopped, and a reply per slot.

*It leaves room to grow.* A neighbour we crowd out shows only what the server let it
have, not what it wants: one slot more than it holds lets it grow to its demand, a slot
per interval. A single neighbour request seen is reserved too (two slots): a neighbour
that starts after us, or comes back, first shows as one request that slipped into the
moment one of our slots freed at the server and not yet in our book; left unreserved,
our next sends refill the window, its next request takes the place of one of ours and we
get the 429 instead (in the simulation over a 40 ms round trip, a neighbour starting
after us cost about twice as many 429s). Alone, no reply ever shows a neighbour
(``theirs_r <= N_r = 0``) and the limiter keeps the whole budget.

*It is bounded.* At most ``M`` neighbour slots are alive (``M`` is clamped to 10,000 when
read), so no header can make the limiter allocate or loop in proportion to it.

What is not promised: a neighbour that bursts after the last reply we saw can still
take the window before we know; the 429 that follows pauses every request until the
window frees, and the burst is reserved from that reply on. The estimate needs replies
to learn from: the shorter the round trip against the interval, the closer it follows.

**Pauses and the daily budget.** A 429 pauses every request until ``Retry-After`` (else
one interval). ``X-RateLimit-Daily-Remaining: 0`` stops every request until the reset
(``Retry-After`` when given, else the next midnight UTC: the reset time is not
documented). A caller that passes ``max_pause`` to :meth:`Limiter.acquire` is never
parked on either: when the known wait exceeds it, ``acquire`` raises
:class:`~ghl_async.errors.RateLimitError` (with ``retry_after``) or
:class:`~ghl_async.errors.DailyLimitExceeded` (with ``resets_at``) at once, and nothing is
sent. The client passes ``RetryPolicy.max_retry_after``. Without a bound a pause is
waited out and a spent daily budget still raises at once.

**A bound on any wait.** ``max_wait`` (``Client(max_wait=...)``, for web handlers)
bounds every wait for a slot, the queue included. Waiters are served first come, first
served, so a newcomer's wait is known from its place in the queue and the times the
held slots free (:meth:`WindowBook.estimated_wait`: round trips only add to it, a
waiter ahead that gives up takes from it). Beyond ``max_wait`` it raises
:class:`~ghl_async.errors.RateLimitError` at once with that estimate as
``retry_after``; a wait that runs longer than estimated (slow replies, a neighbour seen
meanwhile) raises when ``max_wait`` has passed. Either way nothing is sent and the
caller leaves the queue.
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import itertools
import logging
import math
import time
import weakref
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import anyio
import msgspec

from . import errors
from ._sansio import RateLimitHeaders, parse_retry_after, seconds_until_daily_reset

__all__ = ["Limiter", "LocalLimiter", "RateLimit", "Reply", "WindowBook"]

logger = logging.getLogger("ghl_async")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A request budget: at most ``max_requests`` in any ``interval`` seconds.

    The default is HighLevel's documented burst budget, 100 per 10 seconds. Passed to
    :class:`~ghl_async.Client` explicitly it is a cap: it holds in every window of its
    own, and so does the budget the server announces.
    """

    max_requests: int = 100
    interval: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.max_requests, bool) or not isinstance(self.max_requests, int):
            raise TypeError("max_requests must be an int")
        if self.max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        if not isinstance(self.interval, (int, float)) or isinstance(self.interval, bool):
            raise TypeError("interval must be a number of seconds")
        if not self.interval > 0 or math.isinf(self.interval):
            raise ValueError("interval must be positive and finite")

    @property
    def per_second(self) -> float:
        """The budget as a steady rate."""
        return self.max_requests / self.interval

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Read ``"100/10s"``, ``"25/1s"`` or ``"100/10"`` (seconds)."""
        try:
            count, _, span = text.strip().partition("/")
            span = span.strip().removesuffix("s") or "1"
            return cls(max_requests=int(count), interval=float(span))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a rate like '100/10s': {text!r}") from exc


class Reply(msgspec.Struct, frozen=True, gc=False):
    """What a limiter learns from one reply: its status and rate-limit headers.

    ``daily_reset_in`` is set when the reply says the daily budget is spent: seconds
    until it is expected back.
    """

    status: int
    rate: RateLimitHeaders
    retry_after: float | None = None
    daily_reset_in: float | None = None

    @classmethod
    def from_headers(cls, status: int, headers: Any) -> Reply:
        """Build from a status and a case-insensitive header mapping."""
        now = time.time()
        retry_after = None
        if status == 429:
            retry_after = parse_retry_after(headers.get("Retry-After"), now)
        rate = RateLimitHeaders.from_headers(headers)
        reset_in = None
        if rate.daily_remaining == 0:
            reset_in = seconds_until_daily_reset(now, retry_after)
        return cls(status, rate, retry_after, reset_in)


@runtime_checkable
class Limiter(Protocol):
    """What the client needs of a rate limiter; the Redis limiter implements it too.

    The client calls :meth:`acquire` right before each send (including any resend
    aiohttp makes on a stale keep-alive connection) and :meth:`release` with the ticket
    once the reply's headers are in (``reply``) or the send failed (``None``).

    ``acquire`` must take both keywords, ``max_wait`` and ``max_pause``: the client
    passes them on every request (a limiter with no use for a bound may ignore it).
    """

    async def acquire(
        self, *, max_wait: float | None = None, max_pause: float | None = None
    ) -> object:
        """Wait until one more request may be sent; return a ticket for :meth:`release`.

        ``max_wait`` bounds any wait (the queue for a slot, a 429's pause, the daily
        stop); ``max_pause`` bounds only a pause or the daily stop. ``None``: no bound.
        Raises :class:`~ghl_async.errors.RateLimitError` (with ``retry_after``) or
        :class:`~ghl_async.errors.DailyLimitExceeded`, sending nothing, when a bound
        would be broken.
        """
        ...

    async def release(self, ticket: object, reply: Reply | None) -> None:
        """Report that the request of ``ticket`` got ``reply`` (``None``: no reply)."""
        ...


def _smaller(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def refuse_long_wait(kind: str, wait: float, max_wait: float | None) -> None:
    """Raise instead of waiting ``wait`` seconds for ``kind`` (``"daily"`` or
    ``"pause"``) when that exceeds ``max_wait``; a spent daily budget with no
    ``max_wait`` raises too. Shared by every limiter, so all fail alike.
    """
    if max_wait is not None and wait <= max_wait:
        return
    if kind == "daily":
        resets_at = time.time() + wait
        when = datetime.datetime.fromtimestamp(resets_at, datetime.timezone.utc)
        raise errors.DailyLimitExceeded(
            f"the daily request budget is spent until about {when:%Y-%m-%d %H:%M} UTC; "
            "nothing was sent",
            status=None,
            retry_after=wait,
            resets_at=resets_at,
        )
    if max_wait is not None:
        raise errors.RateLimitError(
            f"rate limited for {wait:.1f} s more, longer than the {max_wait:g} s "
            "allowed; nothing was sent",
            status=None,
            retry_after=wait,
        )


def queue_wait_error(wait: float, max_wait: float) -> errors.RateLimitError:
    """The error of a caller that would queue longer than ``max_wait`` for a slot (or
    did): a slot for it is expected in about ``wait`` seconds.
    """
    return errors.RateLimitError(
        f"no rate slot within {max_wait:g} s: the budget frees one for this request in "
        f"about {wait:.1f} s; nothing was sent",
        status=None,
        retry_after=max(wait, 0.001),
    )


class _Ticket(NamedTuple):
    """What the book notes at a send, for the neighbour estimate at its reply."""

    sent: float
    held: int  # our slots of the server's budget held at the send, not refused
    sends: int  # our sends before this one


class WindowBook:
    """The limiter's bookkeeping and decisions, with no clock and no waiting of its own.

    Every method takes ``now`` (seconds on a monotonic clock), so the rules are tested
    by moving a number, not by sleeping.
    """

    def __init__(self, rate_limit: RateLimit | None = None) -> None:
        # The caller's caps, each a constraint of its own.
        self._caps: list[RateLimit] = [rate_limit] if rate_limit is not None else []
        # The server's budget: HighLevel's default until a reply announces one (with no
        # cap); unknown until then with a cap.
        self._server: RateLimit | None = None if rate_limit is not None else RateLimit()
        self._derive()
        self.learned = False
        self.in_flight = 0
        self.paused_until = 0.0
        self.daily_until = 0.0
        # Reply times of finished requests, oldest first (a slot per constraint each).
        self._finished: list[float] = []
        # For the neighbour estimate: reply times of the requests the server refused
        # (they hold a slot here, but the server did not count them), and a count of
        # our sends.
        self._refused: list[float] = []
        self._sends = 0
        # Send times of our requests in flight, oldest first: a neighbour slot past its
        # end makes way for a send only while none of them went out within an interval.
        self._out: list[float] = []
        # End times of neighbour slots (the server's constraint only), soonest first.
        # One past its end stays until a reply of a send made after its end frees it.
        self._booked: list[float] = []

    # -- the constraints -----------------------------------------------------------

    def _derive(self) -> None:
        # Read on every acquire and reply: computed when the constraints change only.
        server = self._server
        self._constraints = (*self._caps, server) if server is not None else tuple(self._caps)
        self._longest = max((c.interval for c in self._constraints), default=0.0)
        self._pruned_at = math.nan  # the horizon moved: prune again

    @property
    def caps(self) -> tuple[RateLimit, ...]:
        """The caller's caps."""
        return tuple(self._caps)

    @property
    def server(self) -> RateLimit | None:
        """The server's budget: announced, HighLevel's default before that (with no
        cap), or ``None`` (unknown, with a cap).
        """
        return self._server

    @property
    def constraints(self) -> tuple[RateLimit, ...]:
        """Every constraint that holds: the caps, then the server's budget if known."""
        return self._constraints

    @property
    def tightest(self) -> RateLimit:
        """The constraint with the lowest steady rate (for display)."""
        return min(self.constraints, key=lambda c: (c.per_second, c.interval))

    @property
    def max_requests(self) -> int:
        """``max_requests`` of :attr:`tightest`."""
        return self.tightest.max_requests

    @property
    def interval(self) -> float:
        """``interval`` of :attr:`tightest`."""
        return self.tightest.interval

    def add_cap(self, now: float, rate_limit: RateLimit) -> None:
        """Add ``rate_limit`` as one more constraint (another caller's cap)."""
        if rate_limit not in self._caps:
            self._caps.append(rate_limit)
            self._derive()

    # -- slots ---------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        # Pruning only bounds memory (every count bisects by its own edge), and one
        # acquire asks several times at one ``now``: once is enough.
        if now == self._pruned_at:
            return
        self._pruned_at = now
        horizon = now - self._longest
        gone = bisect_right(self._finished, horizon)
        if gone:
            del self._finished[:gone]
        gone = bisect_right(self._refused, horizon)
        if gone:
            del self._refused[:gone]

    def _own_alive(self, now: float, constraint: RateLimit) -> int:
        """Index of the first finished request still holding a slot of ``constraint``."""
        return bisect_right(self._finished, now - constraint.interval)

    def _held_by(self, now: float, constraint: RateLimit) -> int:
        held = self.in_flight + len(self._finished) - self._own_alive(now, constraint)
        if constraint is self._server:
            held += len(self._booked)
        return held

    def held(self, now: float) -> int:
        """The most slots held now of any constraint (requests in flight, finished less
        than its interval ago, and neighbour slots for the server's budget).
        """
        self._prune(now)
        return max(self._held_by(now, c) for c in self.constraints)

    def neighbour_slots(self, now: float) -> int:
        """Neighbour slots booked and not yet expired."""
        self._prune(now)
        return len(self._booked)

    def _free_at(self, now: float, constraint: RateLimit) -> float | None:
        """When one more slot of ``constraint`` is free (``now`` if it is), or ``None``
        when that needs a request in flight to finish first.
        """
        finished = self._finished
        first = self._own_alive(now, constraint)
        booked = self._booked if constraint is self._server else []
        # Neighbour slots past their end wait for a reply, like a request in flight;
        # with none of ours out but sends an interval old, one of them makes way for a
        # send (see take()), and when the newest send out turns an interval old.
        overdue = bisect_right(booked, now)
        probe_at = math.inf
        if overdue:
            probe_at = self._probe_at()
            if probe_at <= now:
                overdue -= 1
                booked = booked[1:]
        finite = len(finished) - first + len(booked) - overdue
        held = self.in_flight + overdue + finite
        if held < constraint.max_requests:
            return now
        needed = held - constraint.max_requests + 1
        if needed > finite:
            return None if probe_at == math.inf else probe_at
        interval = constraint.interval
        expiries = heapq.merge(
            (f + interval for f in itertools.islice(finished, first, None)),
            itertools.islice(booked, overdue, None),
        )
        return min(next(itertools.islice(expiries, needed - 1, None)), probe_at)

    def overdue(self, now: float) -> bool:
        """Whether a neighbour slot past its end still waits for a reply to free it."""
        booked = self._booked
        return bool(booked) and booked[0] <= now

    def _probe_at(self) -> float:
        """From when a send may take the place of a neighbour slot past its end: once
        no send of ours out went out within the server's interval. A reply to one sent
        after the slot's end would free it, and one sent before may renew it; a send out
        that long has no reply coming soon (a hung request, a crashed process), and
        waiting for it would stall every send behind slots no reply can free.
        """
        out = self._out
        if not out:
            return -math.inf
        server = self._server
        return out[-1] + (server.interval if server is not None else self._longest)

    def blocked(self, now: float) -> tuple[str, float] | None:
        """``("daily", seconds)`` while the daily budget is spent, ``("pause", seconds)``
        while a 429's pause runs, else ``None``.
        """
        if now < self.daily_until:
            return "daily", self.daily_until - now
        if now < self.paused_until:
            return "pause", self.paused_until - now
        return None

    def wait_time(self, now: float) -> float | None:
        """``0.0``: send now; a positive number: look again after that many seconds;
        ``None``: wait until a request in flight finishes.
        """
        blocked = self.blocked(now)
        if blocked is not None:
            return blocked[1]
        if not self.learned and self.in_flight:
            # Until the first reply says what the budget is, send one request at a time.
            return None
        self._prune(now)
        latest = now
        for constraint in self._constraints:
            free_at = self._free_at(now, constraint)
            if free_at is None:
                return None
            latest = max(latest, free_at)
        return latest - now

    def estimated_wait(self, now: float, ahead: int) -> float:
        """How long a request waits behind ``ahead`` others queued before it (first
        come, first served), at the soonest: for ``max_wait``.

        Per constraint ``(M, I)``: the slots held now free at known times (a request
        in flight no sooner than ``now + I``); the first ``M`` to free (the first few
        only bring the count under ``M`` after a budget shrank) serve the first ``M``
        requests of the queue, and each slot serves again one interval after it was
        taken. So the ``n``-th request of the queue (from 0) goes at
        ``free[n % M] + (n // M) * I`` at the earliest. Round trips only add to that;
        a waiter ahead that gives up (its own ``max_wait``) takes from it.
        """
        blocked = self.blocked(now)
        start = now if blocked is None else now + blocked[1]
        self._prune(now)
        latest = start
        for constraint in self.constraints:
            latest = max(latest, self._nth_free(now, start, constraint, ahead))
        return latest - now

    def _nth_free(self, now: float, start: float, constraint: RateLimit, n: int) -> float:
        budget, interval = constraint.max_requests, constraint.interval
        first = self._own_alive(now, constraint)
        finished = self._finished
        booked = self._booked if constraint is self._server else []
        held = self.in_flight + len(finished) - first + len(booked)
        index = n % budget + max(0, held - budget)  # among the held slots' free times
        free_now = max(0, budget - held)
        if index < free_now:
            at = start
        else:
            expiries = heapq.merge(
                (f + interval for f in itertools.islice(finished, first, None)),
                booked,
                itertools.repeat(now + interval, self.in_flight),
            )
            at = max(start, next(itertools.islice(expiries, index - free_now, None)))
        return at + (n // budget) * interval

    def take(self, now: float) -> _Ticket:
        """Record a send that :meth:`wait_time` allowed; returns the ticket for finish()."""
        # Our slots the server could still count, over its interval (while unknown, the
        # longest cap's: more of ours, never a neighbour that is not there).
        held = 0
        if self._constraints:
            self._prune(now)
            server = self._server
            window = server.interval if server else max(c.interval for c in self._caps)
            edge = now - window
            alive = len(self._finished) - bisect_right(self._finished, edge)
            refused = len(self._refused) - bisect_right(self._refused, edge)
            held = self.in_flight + alive - refused
        booked = self._booked
        if booked and booked[0] <= now and self._probe_at() <= now:
            # Nothing of ours sent within an interval is out to free a neighbour slot
            # past its end: this send takes its place and its reply looks again.
            del booked[0]
        insort(self._out, now)
        self.in_flight += 1
        self._sends += 1
        return _Ticket(now, held, self._sends - 1)

    # -- replies -------------------------------------------------------------------

    def finish(self, now: float, reply: Reply | None, ticket: _Ticket | None = None) -> list[str]:
        """Record the end of a send (``ticket`` from :meth:`take`); return what changed."""
        self.in_flight -= 1
        out = self._out
        if out:
            # This send's time (the oldest when the ticket is unknown: conservative).
            at = 0 if ticket is None else bisect_left(out, ticket.sent)
            if at == len(out) or (ticket is not None and out[at] != ticket.sent):
                at = 0
            del out[at]
        insort(self._finished, now)
        if reply is None:
            return []
        notes = self._learn(now, reply, ticket)
        booked = self._booked
        if ticket is not None and booked and booked[0] <= ticket.sent:
            # A reply to a send made after a neighbour slot's end, that did not renew
            # it, frees it: one slot per reply.
            del booked[0]
        return notes

    def _learn(self, now: float, reply: Reply, ticket: _Ticket | None) -> list[str]:
        if reply.status == 429:
            insort(self._refused, now)
        self.learned = True
        notes: list[str] = []
        self._learn_budget(now, reply, notes)
        daily_spent = self._learn_daily(now, reply, notes)
        if ticket is not None and not (daily_spent and reply.status == 429):
            self._estimate_neighbour(now, reply, ticket, notes)
        if reply.status == 429 and not daily_spent:
            fallback = self.server.interval if self.server is not None else self.interval
            pause = reply.retry_after if reply.retry_after is not None else fallback
            until = now + pause
            if until > self.paused_until:
                self._hold_through_pause(now, until)
                self.paused_until = until
                notes.append(f"429: pausing {pause:.1f} s")
        return notes

    def _hold_through_pause(self, now: float, until: float) -> None:
        """A pause stops the clock of every neighbour slot that would end in it: nothing
        of ours is sent to renew it meanwhile, and the neighbour goes on spending.
        """
        self._prune(now)
        start = max(now, self.paused_until)  # a pause running already stopped them
        booked = self._booked
        ending = bisect_right(booked, until)
        if ending:
            pause = until - start
            booked[:ending] = [max(expiry, start) + pause for expiry in booked[:ending]]
            booked.sort()

    def _learn_budget(self, now: float, reply: Reply, notes: list[str]) -> None:
        rate = reply.rate
        max_requests, interval = rate.max_requests, rate.interval
        if not max_requests or not interval:
            return
        server = self._server
        # Most replies repeat the budget: compare the numbers before building anything.
        if server is not None and (server.max_requests, server.interval) == (
            max_requests,
            interval,
        ):
            return
        announced = RateLimit(max_requests, interval)
        self._server = announced
        self._derive()
        notes.append(f"server budget now {announced.max_requests} per {announced.interval:g} s")
        # Own slots follow the new interval by themselves (they are kept as reply
        # times). Neighbour slots booked under a longer window end no later than a
        # new booking would, and no more than the new budget stay.
        latest = now + announced.interval
        booked = [min(expiry, latest) for expiry in self._booked]
        self._booked = booked[-announced.max_requests :]

    def _learn_daily(self, now: float, reply: Reply, notes: list[str]) -> bool:
        left = reply.rate.daily_remaining
        if left is None:
            return False
        if left > 0:
            self.daily_until = 0.0
            return False
        reset_in = reply.daily_reset_in
        if reset_in is None:
            reset_in = seconds_until_daily_reset(time.time(), reply.retry_after)
        if now + reset_in > self.daily_until:
            self.daily_until = now + reset_in
            notes.append(f"daily budget spent: stopping for {reset_in:.0f} s")
        return True

    def _estimate_neighbour(
        self, now: float, reply: Reply, ticket: _Ticket, notes: list[str]
    ) -> None:
        """The rule of the module docstring: book what the server counted beyond us."""
        server = self._server
        remaining = reply.rate.remaining
        if server is None or remaining is None:
            return
        budget = server.max_requests
        counted = budget - min(remaining, budget)
        later = self._sends - ticket.sends - 1  # ours sent during the round trip
        ours = ticket.held + (reply.status != 429) + later
        theirs = counted - ours
        if theirs <= 0:
            return
        # How many of ``ours`` the server may not have counted: the later sends (not
        # yet arrived, perhaps) and our slots that freed during the round trip (the
        # server may have forgotten them): ``ours`` less what we hold now.
        edge = now - server.interval
        alive = len(self._finished) - bisect_right(self._finished, edge)
        refused = len(self._refused) - bisect_right(self._refused, edge)
        unsure = later + max(0, ours - (self.in_flight + alive - refused))
        # One slot of room: a neighbour we crowd out shows only what it got, not what
        # it wants.
        reserve = min(theirs + 1, budget)
        end = now + server.interval + 2 * (now - ticket.sent)
        # Hold ``reserve`` slots until ``end``: move the latest bookings there and add
        # what is missing, so the same neighbour requests are never booked twice. Up
        # to ``unsure`` more slots already booked are kept too (never added).
        booked = self._booked
        moving = min(reserve + unsure, budget, len(booked))
        stay = len(booked) - moving
        extra = max(0, reserve - moving)
        moved = (max(expiry, end) for expiry in booked[stay:])
        self._booked = sorted([*booked[:stay], *moved, *[end] * extra])
        if extra:
            notes.append(
                f"server has {remaining} left: a neighbour holds {theirs}; "
                f"holding back {extra} more"
            )


class LocalLimiter:
    """The in-process limiter: the :class:`WindowBook` rules, waiters served in order.

    Args:
        rate_limit: an explicit cap, or ``None`` to follow the server's announced budget
            (starting from HighLevel's default of 100 per 10 s).
        clock: a monotonic clock in seconds (tests may pass their own).
    """

    def __init__(
        self,
        rate_limit: RateLimit | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = WindowBook(rate_limit)
        self._clock = clock
        self._lock: anyio.Lock | None = None
        self._changed: anyio.Event | None = None
        self._queued = 0  # callers waiting in acquire: a newcomer's place in the queue

    def __repr__(self) -> str:
        book = self.book
        budget = " and ".join(f"{c.max_requests} per {c.interval:g} s" for c in book.constraints)
        return f"LocalLimiter({budget}, in_flight={book.in_flight})"

    def add_cap(self, rate_limit: RateLimit) -> None:
        """Add ``rate_limit`` as one more constraint (another client's cap)."""
        self.book.add_cap(self._clock(), rate_limit)

    def _refuse_long_waits(
        self, now: float, max_wait: float | None, max_pause: float | None, ahead: int
    ) -> None:
        book = self.book
        blocked = book.blocked(now)
        if blocked is not None:
            refuse_long_wait(blocked[0], blocked[1], _smaller(max_wait, max_pause))
        if max_wait is not None:
            wait = book.estimated_wait(now, ahead)
            if wait > max_wait:
                raise queue_wait_error(wait, max_wait)

    async def acquire(
        self, *, max_wait: float | None = None, max_pause: float | None = None
    ) -> object:
        """Wait for a send slot (first come, first served).

        With ``max_wait`` a request never queues longer than that: when its place in
        the queue against the times the held slots free says it would,
        it raises :class:`~ghl_async.errors.RateLimitError` at once, with
        ``retry_after`` the estimate; when the wait runs longer than the estimate
        (replies slower than expected, a neighbour's slots booked meanwhile), it raises
        when ``max_wait`` has passed. A 429's pause longer than ``max_pause`` (or
        ``max_wait``) raises :class:`~ghl_async.errors.RateLimitError` at once, and
        a spent daily budget :class:`~ghl_async.errors.DailyLimitExceeded` (unless it
        comes back within the bound). Nothing is sent when it raises.
        """
        book = self.book
        if self._lock is None:
            self._lock = anyio.Lock()
        now = self._clock()
        if self._queued:
            passes = self._may_pass(now)
        else:  # the common case, written out: a free slot and nobody ahead
            passes = book.wait_time(now) == 0.0
        if passes:
            return book.take(now)
        ahead = self._queued
        self._refuse_long_waits(now, max_wait, max_pause, ahead)
        self._queued += 1
        try:
            if max_wait is None:
                return await self._queue(max_pause)
            with anyio.move_on_after(max_wait):
                return await self._queue(_smaller(max_wait, max_pause))
            # Still queued when max_wait ran out.
            now = self._clock()
            raise queue_wait_error(book.estimated_wait(now, self._queued - 1), max_wait)
        finally:
            self._queued -= 1

    def _may_pass(self, now: float) -> bool:
        """Whether a newcomer may take a slot now without a trip through the queue.

        Only when a slot is free and, if others are queued, there is room for every one
        of them as well: then going first costs none of them anything. Asking whether
        the queue's lock is held would be wrong twice over: a waiter handed the lock but
        not yet run holds it, so every newcomer would queue behind it and the queue,
        once formed, would never drain while requests keep coming (a trip through the
        event loop per request for nothing).
        """
        book = self.book
        if book.wait_time(now) != 0.0:
            return False
        if not self._queued:
            return True
        # The estimate counts a neighbour slot past its end as free; it is not yet.
        return not book.overdue(now) and book.estimated_wait(now, self._queued) == 0.0

    async def _queue(self, max_pause: float | None) -> object:
        book = self.book
        assert self._lock is not None
        async with self._lock:
            while True:
                now = self._clock()
                blocked = book.blocked(now)
                if blocked is not None:
                    refuse_long_wait(blocked[0], blocked[1], max_pause)
                wait = book.wait_time(now)
                if wait == 0.0:
                    return book.take(now)
                if self._changed is None:
                    self._changed = anyio.Event()
                changed = self._changed
                if wait is None:
                    await changed.wait()
                else:
                    with anyio.move_on_after(wait):
                        await changed.wait()

    async def release(self, ticket: object, reply: Reply | None) -> None:
        """Free the send slot; learn from the reply's headers."""
        sent = ticket if isinstance(ticket, _Ticket) else None
        for note in self.book.finish(self._clock(), reply, sent):
            logger.debug("rate limit: %s", note)
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()


# One limiter per token (or token provider) per event loop, shared by every client of it.
_registry: weakref.WeakKeyDictionary[Any, weakref.WeakValueDictionary[Any, LocalLimiter]] = (
    weakref.WeakKeyDictionary()
)


def token_key(token: object) -> object:
    """A registry key for a token that never holds the token itself."""
    if isinstance(token, str):
        return "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    return ("provider", token)


def shared_limiter(loop: object, key: object, rate_limit: RateLimit | None) -> LocalLimiter:
    """The limiter every client of ``key`` on ``loop`` shares, created on first use."""
    per_loop = _registry.setdefault(loop, weakref.WeakValueDictionary())
    limiter = per_loop.get(key)
    if limiter is None:
        limiter = LocalLimiter(rate_limit)
        per_loop[key] = limiter
    elif rate_limit is not None:
        limiter.add_cap(rate_limit)
    return limiter
