"""The in-process limiter: the window book behind a FIFO queue of waiting requests,
shared by every client of one token on one event loop.
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import anyio

from ghl_async.ratelimit.book import Ticket, WindowBook
from ghl_async.ratelimit.budget import RateLimit
from ghl_async.ratelimit.protocol import (
    Reply,
    queue_wait_error,
    refuse_long_wait,
    smaller_bound,
)

__all__ = ["LocalLimiter", "shared_limiter", "token_key"]

logger = logging.getLogger("ghl_async")


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
            refuse_long_wait(blocked[0], blocked[1], smaller_bound(max_wait, max_pause))
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
        try:
            return self.acquire_nowait()
        except anyio.WouldBlock:
            return await self._wait(self._clock(), max_wait, max_pause)

    def acquire_nowait(self) -> object:
        """A send slot now, or ``anyio.WouldBlock``: :meth:`acquire`'s first step alone.

        Takes a slot only when :meth:`acquire` would take it without waiting (a free
        slot, nobody queued who would be the worse for it), so calling this first and
        :meth:`acquire` on ``WouldBlock`` is :meth:`acquire`, less a coroutine per
        request on the common path. Never refuses a long wait: that takes a place in
        the queue, which is :meth:`acquire`'s.
        """
        now = self._clock()
        if self._queued:
            if not self._may_pass(now):
                raise anyio.WouldBlock
        elif self.book.wait_time(now) != 0.0:  # the common case: nobody ahead
            raise anyio.WouldBlock
        return self.book.take(now)

    async def _wait(self, now: float, max_wait: float | None, max_pause: float | None) -> object:
        """Queue for a slot (the slow path of :meth:`acquire`)."""
        book = self.book
        if self._lock is None:
            self._lock = anyio.Lock()
        ahead = self._queued
        self._refuse_long_waits(now, max_wait, max_pause, ahead)
        self._queued += 1
        try:
            if max_wait is None:
                return await self._queue(max_pause)
            with anyio.move_on_after(max_wait):
                return await self._queue(smaller_bound(max_wait, max_pause))
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
        self.release_nowait(ticket, reply)

    def release_nowait(self, ticket: object, reply: Reply | None) -> None:
        """:meth:`release` without a coroutine: it never waits (the transport's path)."""
        sent = ticket if isinstance(ticket, Ticket) else None
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
