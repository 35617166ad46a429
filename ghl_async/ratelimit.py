"""Rate limiting: the budget, the ``Limiter`` protocol, and the in-process limiter.

The guarantee: at most ``max_requests`` requests reach the server in ANY window of
``interval`` seconds, whether the server counts in fixed or sliding windows, whatever the
network delay. A plain token or leaky bucket (``aiolimiter.AsyncLimiter(100, 10)``)
admits a burst of 100 and then 10 a second, about 200 in the first 10 seconds; this one
does not.

How: every request holds a *slot* from the moment it is allowed to send until its reply
headers arrive (or it fails), and for one ``interval`` after that. A new request is sent
only while fewer than ``max_requests`` slots are held. The server saw each request at
some moment between its send and its reply, so any server window of ``interval`` that
contains ``max_requests + 1`` arrivals would have had all of them holding a slot when
the last one was sent, which the rule forbids. No margin for network delay is needed;
the price is one round trip per window (about 1% at 100 ms latency on a 10 s window).

On top of that the limiter learns from replies: the budget the server announces
(``X-RateLimit-Max`` / ``-Interval-Milliseconds``) replaces the default or, for an
explicit :class:`RateLimit`, caps it from below; a ``Remaining`` lower than the limiter's
own count (another process spends the same budget) makes it hold back; a 429 pauses every
request of the limiter until the window frees.
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio

from ._sansio import RateLimitHeaders, parse_retry_after

__all__ = ["Limiter", "LocalLimiter", "RateLimit", "Reply", "WindowBook"]

logger = logging.getLogger("ghl_async")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A request budget: at most ``max_requests`` in any ``interval`` seconds.

    The default is HighLevel's documented burst budget, 100 per 10 seconds. Passed to
    :class:`~ghl_async.Client` explicitly it is a cap: the client uses the smaller of it
    and what the server announces.
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
        if not self.interval > 0:
            raise ValueError("interval must be positive")

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


@dataclass(frozen=True, slots=True)
class Reply:
    """What a limiter learns from one reply: its status and rate-limit headers."""

    status: int
    rate: RateLimitHeaders
    retry_after: float | None = None

    @classmethod
    def from_headers(cls, status: int, headers: Any) -> Reply:
        """Build from a status and a case-insensitive header mapping."""
        retry_after = None
        if status == 429:
            retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
        return cls(status, RateLimitHeaders.from_headers(headers), retry_after)


@runtime_checkable
class Limiter(Protocol):
    """What the client needs of a rate limiter; the Redis limiter implements it too.

    The client calls :meth:`acquire` right before each send (including any resend
    aiohttp makes on a stale keep-alive connection) and :meth:`release` with the ticket
    once the reply's headers are in (``reply``) or the send failed (``None``).
    """

    async def acquire(self) -> object:
        """Wait until one more request may be sent; return a ticket for :meth:`release`."""
        ...

    async def release(self, ticket: object, reply: Reply | None) -> None:
        """Report that the request of ``ticket`` got ``reply`` (``None``: no reply)."""
        ...


class WindowBook:
    """The limiter's bookkeeping and decisions, with no clock and no waiting of its own.

    Every method takes ``now`` (seconds on a monotonic clock), so the rules are tested
    by moving a number, not by sleeping.
    """

    def __init__(self, rate_limit: RateLimit | None = None) -> None:
        self.adopt_server_budget = rate_limit is None
        self.cap = rate_limit or RateLimit()
        self.max_requests = self.cap.max_requests
        self.interval = self.cap.interval
        self.learned = False
        self.in_flight = 0
        self.paused_until = 0.0
        # Times at which finished requests stop counting, oldest first.
        self._expiries: deque[float] = deque()
        # How many slots have expired so far (see finish()).
        self.expired = 0

    def add_cap(self, now: float, rate_limit: RateLimit) -> None:
        """Lower the budget to ``rate_limit`` where it is tighter (several callers' caps)."""
        if self.adopt_server_budget:
            self.adopt_server_budget = False
            self.cap = rate_limit
        elif rate_limit.per_second < self.cap.per_second:
            self.cap = rate_limit
        if rate_limit.per_second < self.max_requests / self.interval:
            self._set_budget(now, rate_limit)

    def _set_budget(self, now: float, budget: RateLimit) -> None:
        if budget.interval < self.interval:
            # Slots taken under the longer window end no later than a new one would:
            # still conservative, and the expiries stay in order.
            latest = now + budget.interval
            self._expiries = deque(min(expiry, latest) for expiry in self._expiries)
        self.max_requests, self.interval = budget.max_requests, budget.interval

    def held(self, now: float) -> int:
        """Slots held now: requests in flight plus those finished less than a window ago."""
        expiries = self._expiries
        while expiries and expiries[0] <= now:
            expiries.popleft()
            self.expired += 1
        return self.in_flight + len(expiries)

    def wait_time(self, now: float) -> float | None:
        """``0.0``: send now; a positive number: look again after that many seconds;
        ``None``: wait until a request in flight finishes.
        """
        if now < self.paused_until:
            return self.paused_until - now
        if not self.learned and self.in_flight:
            # Until the first reply says what the budget is, send one request at a time.
            return None
        held = self.held(now)
        if held < self.max_requests:
            return 0.0
        finished_needed = held - self.max_requests + 1
        if finished_needed <= len(self._expiries):
            return self._expiries[finished_needed - 1] - now
        return None

    def take(self) -> int:
        """Record a send that :meth:`wait_time` allowed; returns the ticket for finish()."""
        self.in_flight += 1
        return self.expired

    def finish(self, now: float, reply: Reply | None, ticket: int | None = None) -> list[str]:
        """Record the end of a send (``ticket`` from :meth:`take`); return what changed."""
        self.in_flight -= 1
        self._expiries.append(now + self.interval)
        if reply is None:
            return []
        self.learned = True
        self.held(now)  # count what has expired by now
        # The server counted its Remaining while handling this request: slots that have
        # expired here since the send may still have counted there.
        expired_since_send = self.expired - ticket if ticket is not None else 0
        return self._learn(now, reply, expired_since_send)

    def _learn(self, now: float, reply: Reply, expired_since_send: int) -> list[str]:
        notes: list[str] = []
        rate = reply.rate
        if rate.budget_known:
            assert rate.max_requests is not None
            assert rate.interval is not None
            announced = RateLimit(rate.max_requests, rate.interval)
            if self.adopt_server_budget or announced.per_second < self.cap.per_second:
                chosen = announced
            else:
                chosen = self.cap
            if (chosen.max_requests, chosen.interval) != (self.max_requests, self.interval):
                notes.append(
                    f"budget now {chosen.max_requests} requests per {chosen.interval:g} s"
                )
                self._set_budget(now, chosen)
        if rate.remaining is not None:
            believed = self.max_requests - self.held(now) - expired_since_send
            if rate.remaining < believed:
                # Someone else spends this budget: count their requests as ours.
                spent_elsewhere = believed - rate.remaining
                self._expiries.extend([now + self.interval] * spent_elsewhere)
                notes.append(
                    f"server has {rate.remaining} left where {believed} were expected: "
                    f"holding back {spent_elsewhere}"
                )
        if reply.status == 429:
            pause = reply.retry_after if reply.retry_after is not None else self.interval
            until = now + pause
            if until > self.paused_until:
                self.paused_until = until
                notes.append(f"429: pausing {pause:.1f} s")
        return notes


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

    def __repr__(self) -> str:
        book = self.book
        return (
            f"LocalLimiter({book.max_requests} per {book.interval:g} s, "
            f"in_flight={book.in_flight})"
        )

    def add_cap(self, rate_limit: RateLimit) -> None:
        """Lower the budget to ``rate_limit`` where it is tighter (another client's cap)."""
        self.book.add_cap(self._clock(), rate_limit)

    async def acquire(self) -> object:
        """Wait for a send slot (first come, first served)."""
        book = self.book
        if self._lock is None:
            self._lock = anyio.Lock()
        elif not self._lock.locked() and book.wait_time(self._clock()) == 0.0:
            return book.take()
        async with self._lock:
            while True:
                wait = book.wait_time(self._clock())
                if wait == 0.0:
                    return book.take()
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
        since = ticket if isinstance(ticket, int) else None
        for note in self.book.finish(self._clock(), reply, since):
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
