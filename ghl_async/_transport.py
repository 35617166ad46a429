"""The one module that speaks aiohttp: send a GET, get ``(status, headers, body)`` back.

Every send that reaches the wire passes the rate limiter, including the one aiohttp
makes on its own: when a reused keep-alive connection turns out to be closed, aiohttp
sends an idempotent request a second time inside ``session.get``. That resend runs
through the request's middleware chain, so a per-request middleware is where the
limiter is held: the first send uses the slot the caller acquired, any resend acquires
another. Under a strict budget an unmetered resend is a 429 we caused ourselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from . import errors
from .ratelimit import Limiter, Reply, acquire_slot
from .stats import ClientStats

__all__ = ["AiohttpTransport", "RawReply"]


@dataclass(slots=True)
class RawReply:
    """A complete reply: status, headers (case-insensitive), the whole body, and what its
    rate-limit headers say (parsed once, for the limiter and the client's stats).
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    reply: Reply


class _Gate:
    """Holds the limiter across the sends of one request."""

    __slots__ = ("held", "limiter", "reply", "stats", "ticket")

    def __init__(self, limiter: Limiter, ticket: object, stats: ClientStats) -> None:
        self.limiter = limiter
        self.ticket = ticket
        self.stats = stats
        self.held = True
        self.reply: Reply | None = None

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        self.stats.requests += 1
        if not self.held:
            # aiohttp is resending on a fresh connection: that is one more request.
            self.ticket = await acquire_slot(self.limiter, None)
            self.held = True
        self.reply = None
        try:
            response = await handler(request)
            self.reply = Reply.from_headers(response.status, response.headers)
            return response
        finally:
            await self.release(self.reply)

    async def release(self, reply: Reply | None) -> None:
        if self.held:
            self.held = False
            await self.limiter.release(self.ticket, reply)


class AiohttpTransport:
    """GET requests over one long-lived :class:`aiohttp.ClientSession`.

    Args:
        session: a caller-owned session (never closed here), or ``None`` to open one in
            :meth:`open` with a connector sized to ``max_connections``.
        max_connections: the connection pool size for a session opened here.
        timeout: seconds one attempt may take, connecting and reading included.
        stats: where every send that reaches the wire is counted.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        *,
        max_connections: int,
        timeout: float,
        stats: ClientStats,
    ) -> None:
        self._stats = stats
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`aclose`."""
        return self._session is not None and not self._session.closed

    async def open(self) -> None:
        """Open the session (inside the running loop) unless the caller gave one."""
        if self._session is None or (self._owns_session and self._session.closed):
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_connections,
                keepalive_timeout=30.0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=True,
                raise_for_status=False,
            )
            self._owns_session = True

    async def aclose(self) -> None:
        """Close the session if this transport opened it; release every connection."""
        session = self._session
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    async def get(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        limiter: Limiter,
        ticket: object,
    ) -> RawReply:
        """Send one GET holding ``ticket`` of ``limiter`` and read the whole reply.

        Raises:
            ghl_async.errors.TransportError: no complete reply (the aiohttp error is not
                chained: it would carry the request headers, token included).
        """
        session = self._session
        if session is None or session.closed:
            await limiter.release(ticket, None)
            raise RuntimeError("the client is not open: use 'async with Client(...)'")
        gate = _Gate(limiter, ticket, self._stats)
        try:
            async with session.get(
                url,
                params=params,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
                middlewares=(gate,),
            ) as response:
                body = await response.read()
                assert gate.reply is not None  # our middleware saw this response
                return RawReply(response.status, response.headers, body, gate.reply)
        except asyncio.TimeoutError:
            error: errors.TransportError = errors.TransportError(
                f"no complete reply within {self._timeout.total:g} s"
            )
        except aiohttp.ClientPayloadError as exc:
            error = errors.TransportError(f"truncated reply body ({type(exc).__name__})")
        except aiohttp.ClientError as exc:
            error = errors.TransportError(_describe(exc))
        finally:
            # A send that never reached the middleware (bad URL, closed session) frees
            # its slot here; a send that did has already freed it.
            await gate.release(None)
        raise error


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
