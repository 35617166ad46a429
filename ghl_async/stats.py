"""Live counters of what a client did, for progress bars, logs and tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["ClientStats"]


@dataclass(slots=True)
class ClientStats:
    """What one client has done so far (updated live; read it any time).

    Attributes:
        requests: sends that went out (each retry and resend counts).
        retries: attempts repeated after a retryable failure.
        throttled: 429 replies seen.
        pages: pages decoded.
        messages: messages decoded.
        repaired_fields: message fields that could not take their types: each got its
            default, its raw value is in the message's ``unparsed``.
        dropped_messages: messages left out of a page because they had no string ``id``.
        server_remaining: ``X-RateLimit-Remaining`` of the latest reply.
        daily_remaining: ``X-RateLimit-Daily-Remaining`` of the latest reply.
        server_max_requests: ``X-RateLimit-Max`` of the latest reply.
        server_interval: ``X-RateLimit-Interval-Milliseconds`` of the latest reply, in s.
        server_date: the ``Date`` header of the latest successful reply, as sent (the
            server's clock; :meth:`server_time` parses it).
    """

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    pages: int = 0
    messages: int = 0
    repaired_fields: int = 0
    dropped_messages: int = 0
    server_remaining: int | None = None
    daily_remaining: int | None = None
    server_max_requests: int | None = None
    server_interval: float | None = None
    server_date: str | None = None

    def as_dict(self) -> dict[str, int | float | str | None]:
        """The counters as a plain dict."""
        return asdict(self)

    def server_time(self) -> datetime | None:
        """The server's clock at its latest successful reply (``Date``), else ``None``."""
        if not self.server_date:
            return None
        try:
            when = parsedate_to_datetime(self.server_date)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None  # a server that sends no usable Date
        return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
