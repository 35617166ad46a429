"""Pure functions between the client and the wire: no I/O, no clock of their own.

Everything here is a function of a status, headers and a body (and ``now`` where time
matters), so it is tested by tables without a socket.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from . import errors
from .models import _ERROR_DECODER

API_VERSION = "2021-04-15"

__all__ = [
    "API_VERSION",
    "RateLimitHeaders",
    "error_for_reply",
    "looks_like_json",
    "parse_retry_after",
]


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """What one reply's ``X-RateLimit-*`` headers say about the budget.

    Any field the reply did not carry (or carried garbled) is ``None``.
    """

    max_requests: int | None = None
    interval: float | None = None
    remaining: int | None = None
    daily_limit: int | None = None
    daily_remaining: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitHeaders:
        """Read the five documented headers (case-insensitive mapping expected)."""
        interval_ms = _int_header(headers, "X-RateLimit-Interval-Milliseconds")
        return cls(
            max_requests=_int_header(headers, "X-RateLimit-Max"),
            interval=interval_ms / 1000.0 if interval_ms else None,
            remaining=_int_header(headers, "X-RateLimit-Remaining"),
            daily_limit=_int_header(headers, "X-RateLimit-Limit-Daily"),
            daily_remaining=_int_header(headers, "X-RateLimit-Daily-Remaining"),
        )

    @property
    def budget_known(self) -> bool:
        """True when the reply announced both the burst size and its interval."""
        return bool(self.max_requests) and bool(self.interval)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    ``now`` is the current Unix time (for the date form). Returns ``None`` when absent or
    unreadable; never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # pragma: no cover - older Pythons returned None
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


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
            resets_at = now + retry_after if retry_after is not None else None
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
