"""Pure functions between the client and the wire: no I/O, no clock of their own.

Everything here is a function of a status, headers and a body (and ``now`` where time
matters), so it is tested by tables without a socket.
"""

from __future__ import annotations

import datetime
import email.utils
import math
from collections.abc import Mapping
from functools import lru_cache

import msgspec
from multidict import istr

from ghl_async import errors
from ghl_async.models import _ERROR_DECODER

API_VERSION = "2021-04-15"

__all__ = [
    "API_VERSION",
    "RateLimitHeaders",
    "error_for_reply",
    "looks_like_json",
    "parse_retry_after",
    "read_count",
    "seconds_until_daily_reset",
]


# Sane bounds for what the rate-limit headers may say. A value outside them is either
# clamped (a budget bigger than any real one) or ignored (an interval over an hour, a
# budget of zero), so no header can make the limiter allocate, loop or sleep in
# proportion to it.
MAX_BUDGET = 10_000
MAX_INTERVAL_MS = 3_600_000
MAX_DAILY = 100_000_000
_MAX_DIGITS = 12
# Retry-After is delta-seconds or an HTTP-date (29 characters); anything longer is junk.
_MAX_RETRY_AFTER_CHARS = 40
MAX_RETRY_AFTER = 7 * 86_400.0

# The rate-limit headers' names, read on every reply, as case-insensitive strings
# (multidict's, aiohttp's header type): aiohttp's headers find them without folding
# their case on each lookup, and to any other mapping they are plain strings.
_INTERVAL = istr("X-RateLimit-Interval-Milliseconds")
_MAX = istr("X-RateLimit-Max")
_REMAINING = istr("X-RateLimit-Remaining")
_LIMIT_DAILY = istr("X-RateLimit-Limit-Daily")
_DAILY_REMAINING = istr("X-RateLimit-Daily-Remaining")


@lru_cache(maxsize=512)
def read_count(value: str | None) -> int | None:
    """A header's non-negative integer: ASCII digits only (no sign, ``_``, spaces
    inside or exponent) and at most 12 of them; anything else is ``None``.

    Remembered for the last 512 values: most replies repeat most of their values (the
    budget, its interval, the daily limit; what is left of a budget of 100).
    """
    if value is None:
        return None
    # The common case first: plain digits, nothing to strip (once per header per reply).
    if len(value) <= _MAX_DIGITS and value.isdigit() and value.isascii():
        return int(value)
    value = value.strip()
    if not value or len(value) > _MAX_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


class RateLimitHeaders(msgspec.Struct, frozen=True, gc=False):
    """What one reply's ``X-RateLimit-*`` headers say about the budget.

    Any field the reply did not carry, or carried unreadable (not plain digits, more
    than 12 digits, a budget or daily limit of zero, an interval of zero or over an
    hour), is ``None``. Readable values are clamped to sane bounds: a budget of at most
    10,000, a daily count of at most 100,000,000, a ``Remaining`` no larger than the
    budget.
    """

    max_requests: int | None = None
    interval: float | None = None
    remaining: int | None = None
    daily_limit: int | None = None
    daily_remaining: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitHeaders:
        """Read the five documented headers (case-insensitive mapping expected)."""
        # Once per reply, so written out: the budget's three headers (the same on most
        # replies) read together from what they said last; ``Remaining`` clamped to the
        # budget, the daily count to its bound.
        get = headers.get
        max_requests, interval, daily_limit = _read_budget(
            get(_MAX), get(_INTERVAL), get(_LIMIT_DAILY)
        )
        remaining = read_count(get(_REMAINING))
        if remaining is not None:
            ceiling = MAX_BUDGET if max_requests is None else max_requests
            if remaining > ceiling:
                remaining = ceiling
        daily_remaining = read_count(get(_DAILY_REMAINING))
        if daily_remaining is not None and daily_remaining > MAX_DAILY:
            daily_remaining = MAX_DAILY
        return cls(max_requests, interval, remaining, daily_limit, daily_remaining)

    @property
    def budget_known(self) -> bool:
        """True when the reply announced both the burst size and its interval."""
        return bool(self.max_requests) and bool(self.interval)


@lru_cache(maxsize=64)
def _read_budget(
    max_raw: str | None, interval_raw: str | None, daily_raw: str | None
) -> tuple[int | None, float | None, int | None]:
    """The budget, its interval in seconds and the daily limit, from their headers' text:
    zero is absent for each, every value clamped (an interval over an hour is absent).

    Remembered for the last 64 combinations: nearly every reply repeats them.
    """
    interval_ms = read_count(interval_raw)
    if interval_ms is not None and not 0 < interval_ms <= MAX_INTERVAL_MS:
        interval_ms = None
    max_requests = read_count(max_raw)
    if not max_requests:
        max_requests = None
    elif max_requests > MAX_BUDGET:
        max_requests = MAX_BUDGET
    daily_limit = read_count(daily_raw)
    if not daily_limit:
        daily_limit = None
    elif daily_limit > MAX_DAILY:
        daily_limit = MAX_DAILY
    return max_requests, interval_ms / 1000.0 if interval_ms else None, daily_limit


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    ``now`` is the current Unix time (for the date form). Returns ``None`` when absent,
    unreadable, or zero and below (a wait of nothing is no instruction: back off as
    without one); at most a week.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_RETRY_AFTER_CHARS:
        return None
    try:
        seconds = float(value) if value.isascii() and "_" not in value else math.nan
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # pragma: no cover - older Pythons returned None
            return None
        if when.tzinfo is None:  # "-0000": UTC with no promise about the source
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def seconds_until_daily_reset(now: float, retry_after: float | None = None) -> float:
    """When a spent daily budget comes back, in seconds from ``now`` (Unix time).

    The reset time is not documented: a ``Retry-After`` on the reply is taken at its
    word, otherwise the next midnight UTC is assumed.
    """
    if retry_after is not None:
        return retry_after
    day = 86_400.0
    return day - (now % day)


def looks_like_json(body: bytes) -> bool:
    """True when a body starts like a JSON object or array (after whitespace)."""
    stripped = body.lstrip()
    return stripped[:1] in (b"{", b"[")


def _read_error_body(body: bytes) -> tuple[str | None, str | None]:
    """The server's message (a list joined) and traceId, if the body is JSON."""
    if not looks_like_json(body):
        return None, None
    try:
        parsed = _ERROR_DECODER.decode(body)
    except msgspec.DecodeError:
        return None, None
    message = parsed.message
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    return message or parsed.error, parsed.trace_id


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
}


def error_for_reply(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
) -> errors.APIStatusError | None:
    """The error a reply stands for, or ``None`` for a 2xx.

    ``now`` is the current Unix time, used for an HTTP-date ``Retry-After`` and for the
    daily reset time.
    """
    if 200 <= status < 300:
        return None
    message, trace_id = _read_error_body(body)
    if message is None:
        message = _REASONS.get(status, "Server error" if status >= 500 else "Unexpected status")
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        budget = RateLimitHeaders.from_headers(headers)
        if budget.daily_remaining == 0:
            resets_at = now + seconds_until_daily_reset(now, retry_after)
            return errors.DailyLimitExceeded(
                message,
                status=status,
                body=body,
                trace_id=trace_id,
                retry_after=retry_after,
                resets_at=resets_at,
            )
        return errors.RateLimitError(
            message, retry_after=retry_after, status=status, body=body, trace_id=trace_id
        )
    if status in (400, 422):
        return errors.BadRequestError(message, status=status, body=body, trace_id=trace_id)
    if status == 401:
        return errors.AuthenticationError(message, status=status, body=body, trace_id=trace_id)
    if status == 403:
        return errors.PermissionDeniedError(message, status=status, body=body, trace_id=trace_id)
    if status == 404:
        return errors.NotFoundError(message, status=status, body=body, trace_id=trace_id)
    if status >= 500:
        error: errors.APIStatusError = errors.ServerError(
            message, status=status, body=body, trace_id=trace_id
        )
        # A 501/505 will not heal by asking again.
        error.retryable = status in (500, 502, 503, 504)
        return error
    return errors.APIStatusError(message, status=status, body=body, trace_id=trace_id)


def request_headers(token: str, user_agent: str) -> dict[str, str]:
    """The headers every call carries."""
    return {
        "Authorization": f"Bearer {token}",
        "Version": API_VERSION,
        "Accept": "application/json",
        "User-Agent": user_agent,
    }
