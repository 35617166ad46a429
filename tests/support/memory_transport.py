"""An in-memory :class:`~ghl_async._http.transport.Transport`: replies from a function.

Like httpx's ``MockTransport``: ``handler(request)`` returns ``(status, headers, body)``
or raises :class:`ghl_async.errors.TransportError`. It keeps the transport's side of the
limiter contract (every send releases its ticket once, with the reply or ``None``) and
records every request it was handed, so engine behaviour is a socket-free table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from multidict import CIMultiDict

from ghl_async import errors
from ghl_async._http.transport import RawReply, Request
from ghl_async.ratelimit import Limiter, Reply

Answer = tuple[int, Mapping[str, str], bytes]
Handler = Callable[[Request], Answer]


class MemoryTransport:
    """Answers every request from ``handler``; counts sends in ``requests``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    async def open(self) -> None:
        self._open = True

    def abandon(self) -> None:
        self._open = False

    async def aclose(self) -> None:
        self._open = False

    async def send(self, request: Request, limiter: Limiter, ticket: object) -> RawReply:
        self.requests.append(request)
        try:
            status, headers, body = self.handler(request)
        except errors.TransportError:
            await limiter.release(ticket, None)
            raise
        case_insensitive = CIMultiDict(headers)
        reply = Reply.from_headers(status, case_insensitive)
        await limiter.release(ticket, reply)
        return RawReply(status, case_insensitive, body, reply)


class CountingLimiter:
    """A limiter that never waits and counts: what a limiter sees of the engine."""

    def __init__(self) -> None:
        self.acquired = 0
        self.released: list[Reply | None] = []

    async def acquire(
        self, *, max_wait: float | None = None, max_pause: float | None = None
    ) -> object:
        self.acquired += 1
        return self.acquired

    async def release(self, ticket: object, reply: Reply | None) -> None:
        self.released.append(reply)
