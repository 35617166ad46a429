"""What the client needs of a rate limiter (:class:`Limiter`), what it reports back
(:class:`Reply`), and the errors every limiter raises alike when a bound would break.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Protocol, runtime_checkable

import msgspec

from ghl_async import errors
from ghl_async._sansio import RateLimitHeaders, parse_retry_after, seconds_until_daily_reset

__all__ = ["Limiter", "Reply", "queue_wait_error", "refuse_long_wait", "smaller_bound"]


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
        rate = RateLimitHeaders.from_headers(headers)
        if status != 429 and rate.daily_remaining != 0:
            return cls(status, rate)  # the common case: no clock
        now = time.time()
        retry_after = None
        if status == 429:
            retry_after = parse_retry_after(headers.get("Retry-After"), now)
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


def smaller_bound(a: float | None, b: float | None) -> float | None:
    """The tighter of two optional bounds (``None``: no bound)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
