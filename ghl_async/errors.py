"""The one exception tree of ghl_async.

Every error the public API raises on purpose is a :class:`GHLError`; bad arguments are
reported before any request as plain :class:`ValueError` / :class:`TypeError`.

::

    GHLError
    ├── APIStatusError              any reply with an error status
    │   ├── BadRequestError         400, 422
    │   ├── AuthenticationError     401
    │   ├── PermissionDeniedError   403
    │   ├── NotFoundError           404
    │   ├── RateLimitError          429 (.retry_after)
    │   │   └── DailyLimitExceeded  429 with X-RateLimit-Daily-Remaining: 0 (.resets_at)
    │   └── ServerError             5xx
    ├── TransportError              connection reset, timeout, truncated or oversized body
    ├── DecodeError                 a body that is not the documented JSON
    ├── PaginationError             the server repeated a cursor
    ├── LimiterUnavailable          a shared limiter (Redis) cannot be reached
    └── SinkError                   an export's sink (file, SQLite, PostgreSQL) cannot write

Errors never carry the token: they hold the status, the server's message, the body
(capped) and HighLevel's ``traceId`` when the body has one.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "DailyLimitExceeded",
    "DecodeError",
    "GHLError",
    "LimiterUnavailable",
    "LocationExportUnavailable",
    "NotFoundError",
    "PaginationError",
    "SinkError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TransportError",
]

#: How many bytes of a reply body an error keeps.
BODY_CAP = 4096


class GHLError(Exception):
    """Base class of every error ghl_async raises.

    Attributes:
        status: the HTTP status, or ``None`` when no reply was read.
        message: the server's message (a list of messages joined with ``"; "``), or a
            description of what went wrong.
        body: the reply body, at most 4 KiB of it (``b""`` when there was none).
        trace_id: HighLevel's ``traceId`` when the body carried one.
        conversation_id: the conversation being read, when known.
        last_message_id: the cursor of the last page read in full before the error,
            so that ``iter_pages(conversation_id, last_message_id=...)`` resumes after it.
        retryable: whether ghl_async would retry this error on its own.
        stops_fan_out: whether this error ends a whole fan-out or export even with
            ``return_exceptions=True`` (every other conversation would fail alike: a
            refused token, a spent daily budget).
    """

    retryable: bool = False
    stops_fan_out: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body[:BODY_CAP]
        self.trace_id = trace_id
        self.conversation_id: str | None = None
        self.last_message_id: str | None = None

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.insert(0, f"HTTP {self.status}:")
        if self.conversation_id is not None:
            parts.append(f"(conversation {self.conversation_id})")
        if self.trace_id:
            parts.append(f"[traceId {self.trace_id}]")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class APIStatusError(GHLError):
    """The server answered with a status that is not a success."""


class BadRequestError(APIStatusError):
    """400 or 422: the request was malformed. Never retried."""


class AuthenticationError(APIStatusError):
    """401: the token is missing, invalid or expired (after one refresh, if any)."""

    stops_fan_out = True


class PermissionDeniedError(APIStatusError):
    """403: the token lacks the scope or the location. Never retried."""


class NotFoundError(APIStatusError):
    """404: no such conversation (or message). Never retried."""


class LocationExportUnavailable(APIStatusError):
    """The location-wide export (``GET /conversations/messages/export``) was refused.

    401/403: the token lacks the scope; 404: the plan has no such endpoint. The
    server's own error is chained as ``__cause__``. Fall back to
    :meth:`~ghl_async.Client.iter_conversations` plus
    :meth:`~ghl_async.Client.fan_out` (``ghl-async export`` does so on its own).
    """


class RateLimitError(APIStatusError):
    """429: over the rate budget.

    Attributes:
        retry_after: seconds the server asked us to wait, when it said.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        body: bytes = b"",
        trace_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body, trace_id=trace_id)
        self.retry_after = retry_after


class DailyLimitExceeded(RateLimitError):
    """429 with ``X-RateLimit-Daily-Remaining: 0``: the day's budget is spent.

    Raised at once rather than retried.

    Attributes:
        resets_at: a Unix timestamp when the budget is expected back, when known.
    """

    retryable = False
    stops_fan_out = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        body: bytes = b"",
        trace_id: str | None = None,
        retry_after: float | None = None,
        resets_at: float | None = None,
    ) -> None:
        super().__init__(
            message, status=status, body=body, trace_id=trace_id, retry_after=retry_after
        )
        self.resets_at = resets_at


class ServerError(APIStatusError):
    """5xx: the server or a proxy in front of it failed. Retried."""

    retryable = True


class TransportError(GHLError):
    """No complete reply: connection refused or reset, timeout, truncated body. Retried.

    A body longer than the client's ``max_body_bytes`` is a ``TransportError`` too, but
    not retried: the server would send it again.
    """

    retryable = True


class DecodeError(GHLError):
    """The body is not the documented JSON.

    A body that is not JSON at all (a proxy's HTML page) is retried; JSON of the wrong
    shape is not.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        trace_id: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, status=status, body=body, trace_id=trace_id)
        self.retryable = retryable


class PaginationError(GHLError):
    """The server handed back a cursor it had already given: paging would never end."""


class LimiterUnavailable(GHLError):
    """A shared rate limiter (Redis) could not be reached; nothing was sent."""

    retryable = False


class SinkError(GHLError):
    """An export's sink could not keep a batch (a full disk, a database gone, a schema of
    another version): nothing of that batch was kept, and the state before it stands.
    """

    retryable = False


E = TypeVar("E", bound=GHLError)


def locate(error: E, conversation_id: str, last_message_id: str | None) -> E:
    """Mark ``error`` as met reading ``conversation_id``, resumable after ``last_message_id``.

    ``last_message_id`` is the cursor of the request that failed: every message before
    it was handed out, so ``iter_pages(conversation_id, last_message_id=...)`` resumes
    with nothing lost and nothing twice (``None``: start again from the newest).
    """
    error.conversation_id = conversation_id
    error.last_message_id = last_message_id
    return error
