"""The one module that speaks aiohttp: send a request, get ``(status, headers, body)`` back.

:class:`AiohttpTransport` implements :class:`ghl_async._http.transport.Transport`.

Every send that reaches the wire passes the rate limiter, including the resend of an
idempotent request whose reused keep-alive connection turns out to be closed. On a
session opened here, aiohttp's own resend is turned off and :meth:`AiohttpTransport.send`
makes it: one more send at once, with a rate slot of its own, counted as a retry. On a
caller's session aiohttp resends inside ``session.get``, through the request's
middleware chain, so a per-request middleware holds the limiter there (the first send
uses the slot the caller acquired, any resend acquires another). Under a strict budget
an unmetered resend is a 429 we caused ourselves. (The middleware costs a closure and a
coroutine per request: about 2% of the client's CPU per page, why a session of ours
goes without.)

A session opened here has the right defaults and carries the engine's headers as its
own (set again when they change: a new token); a request passes only what differs. A
caller's session brings its own defaults; every request here overrides the ones that
would change what a reply means (``raise_for_status``, ``auto_decompress``, redirects,
timeout, middlewares, headers), so statuses reach the same decisions whatever the
session. The body is read in chunks against ``max_body_bytes`` (counted after
decompression): a server cannot make the client hold more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
import msgspec
from multidict import CIMultiDict

from ghl_async import errors
from ghl_async._http.transport import RawReply, Request
from ghl_async.ratelimit.local import LocalLimiter
from ghl_async.ratelimit.protocol import Limiter, Reply
from ghl_async.stats import ClientStats

logger = logging.getLogger("ghl_async")

__all__ = ["DEFAULT_MAX_BODY_BYTES", "AiohttpTransport"]

#: The largest reply body read by default (a page of 100 messages is well under 1 MiB).
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024

# The methods aiohttp resends on a dropped keep-alive connection (RFC 9112, 9.3.1).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class _TooLarge(Exception):
    """The body went over ``max_body_bytes``."""


class _Gate(msgspec.Struct):
    """Holds the limiter across the sends of one request.

    The first send passes straight through (the middleware returns aiohttp's own
    coroutine: no extra coroutine layer on the hot path); a resend, aiohttp's on a
    stale keep-alive connection, first frees the failed send's slot and takes its own.
    The reply's slot is freed by :meth:`AiohttpTransport.send` once its headers are in.
    (A struct: made in C, once per request.)

    ``release_now``: the in-process limiter's ``release_nowait`` (it frees a slot
    without waiting: no coroutine per reply), else ``None``.
    """

    limiter: Limiter
    ticket: object
    stats: ClientStats
    release_now: Callable[[object, Reply | None], None] | None
    held: bool = True
    sends: int = 0

    def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> Awaitable[aiohttp.ClientResponse]:
        """The middleware (a caller's session): each send aiohttp makes passes here."""
        self.stats.requests += 1
        self.sends += 1
        if self.sends == 1:
            return handler(request)
        return self._resend(request, handler)

    async def _resend(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        await self.take_another(request.method, request.url.path, "aiohttp")
        return await handler(request)

    async def take_another(self, method: str, path: str, by: str) -> None:
        """Before a resend on a fresh connection: that is one more request, and a retry
        like any other (counted, so ``stats.retries`` counts every resend on the wire).
        The failed send got no reply; the resend needs a rate slot of its own.
        """
        self.stats.retries += 1
        logger.info(
            "retrying %s %s on a fresh connection: the pooled one was closed under it "
            "(ServerDisconnectedError, resent by %s)",
            method,
            path,
            by,
        )
        if self.held and (pending := self.release(None)) is not None:
            await pending
        self.ticket = await self.limiter.acquire()
        self.held = True

    def release(self, reply: Reply | None) -> Awaitable[None] | None:
        """Free the held slot: ``None`` when freed already, else the limiter's release
        to await (no frame of its own).
        """
        self.held = False
        if self.release_now is not None:
            self.release_now(self.ticket, reply)
            return None
        return self.limiter.release(self.ticket, reply)


class AiohttpTransport:
    """Requests over one long-lived :class:`aiohttp.ClientSession`.

    Args:
        session: a caller-owned session (never closed here), or ``None`` to open one in
            :meth:`open` with a connector sized to ``max_connections``.
        max_connections: the connection pool size for a session opened here.
        timeout: seconds one attempt may take, connecting and reading included.
        stats: where every send that reaches the wire is counted.
        max_body_bytes: the largest body read; a longer one fails the attempt.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        *,
        max_connections: int,
        timeout: float,
        stats: ClientStats,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError("session must be an aiohttp.ClientSession")
        self._stats = stats
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_body = max_body_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        # True on a session of ours: aiohttp's resend is off, send() makes it itself.
        self._resends_here = False
        # The engine's headers last sent (the same mapping until the token changes): a
        # session of ours holds them as its defaults; for a caller's session, they are
        # kept as the case-insensitive multidict aiohttp would otherwise build from them
        # on every request (multidict is aiohttp's own header type; it only reads it).
        self._headers_given: Mapping[str, str] | None = None
        self._headers_made: CIMultiDict[str] = CIMultiDict()

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
            # The stale-connection resend is made in send() (no middleware per request).
            # Where a release has no such switch, aiohttp resends and the middleware
            # meters it, as on a caller's session.
            self._resends_here = hasattr(self._session, "_retry_connection")
            if self._resends_here:
                self._session._retry_connection = False
            self._owns_session = True
            self._loop = asyncio.get_running_loop()
            self._headers_given = None  # a new session has none of the engine's headers

    def abandon(self) -> None:
        """Let go of a session this transport opened, without awaiting (no warning follows).

        For a client dropped unclosed, or used again under a new event loop. On a loop
        still alive the session is closed there, properly, a moment later. On a closed
        loop its sockets went with the loop, and closing the connector only marks it
        closed. :meth:`open` makes a new session when one is needed again.
        """
        session, loop = self._session, self._loop
        if session is None or not self._owns_session or session.closed or loop is None:
            return
        self._session = None
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: as below
                loop.call_soon_threadsafe(_close_later, session)
                return
        connector = session.connector
        if connector is not None:
            _finish_now(connector.close())

    async def aclose(self) -> None:
        """Close the session if this transport opened it; release every connection."""
        session = self._session
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    async def send(self, request: Request, limiter: Limiter, ticket: object) -> RawReply:
        """Send ``request`` holding ``ticket`` of ``limiter`` and read the whole reply.

        Raises:
            ghl_async.errors.TransportError: no complete reply (the aiohttp error is not
                chained: it would carry the request headers, token included).
        """
        session = self._session
        if session is None or session.closed:
            await limiter.release(ticket, None)
            raise RuntimeError("the client is closed: open it again or make a new Client")
        headers = request.headers
        data: object = request.form
        if request.json is not None:
            data = request.json
            headers = {**headers, "Content-Type": "application/json"}
        here = self._resends_here
        if headers is not self._headers_given:  # a new token, or a body's headers
            self._headers_given = headers
            if here:
                # A session of ours sends the engine's headers as its defaults: aiohttp
                # copies them in C, where merging a request's own is a loop in Python.
                # Set before the send, the one await-free step that reads them.
                session.headers.clear()
                session.headers.extend(headers)
            else:
                self._headers_made = CIMultiDict(headers)  # aiohttp's type, built once
        gate = _Gate(
            limiter,
            ticket,
            self._stats,
            limiter.release_nowait if isinstance(limiter, LocalLimiter) else None,
        )
        timeout = self._timeout
        if request.timeout is not None:  # a per-call override (Client.with_options)
            timeout = aiohttp.ClientTimeout(total=request.timeout)
        # Resent once, at once, like aiohttp would: an idempotent request with no body
        # whose send failed on a dropped connection before any reply came.
        resend = here and data is None and request.method in _IDEMPOTENT
        try:
            while True:
                if here:
                    gate.sends += 1
                    self._stats.requests += 1
                replied = False
                try:
                    async with (
                        # A session of ours has every other option right by default
                        # (fewer keywords: less work binding them, once per request).
                        session.request(
                            request.method,
                            request.url,
                            params=request.params,
                            data=data,
                            allow_redirects=False,
                            timeout=timeout,
                        )
                        if here
                        else session.request(
                            request.method,
                            request.url,
                            params=request.params,
                            headers=self._headers_made,
                            data=data,
                            allow_redirects=False,
                            timeout=timeout,
                            middlewares=(gate,),
                            raise_for_status=False,
                            auto_decompress=True,
                        )
                    ) as response:
                        replied = True
                        # The headers are in: free the slot now, before the body is read.
                        reply = Reply.from_headers(response.status, response.headers)
                        if (pending := gate.release(reply)) is not None:
                            await pending
                        try:
                            # The common case inline (one coroutine less per page): the
                            # whole body is in already, (decompressed) in the stream's
                            # buffer.
                            content = response.content
                            if content.is_eof():
                                body = content.read_nowait()
                                if len(body) > self._max_body:
                                    raise _TooLarge
                            else:
                                body = await self._read(response)
                        except _TooLarge:
                            # Never hand a half-read connection back to the pool.
                            response.close()
                            too_large = errors.TransportError(
                                f"reply body over max_body_bytes ({self._max_body} bytes): "
                                "not read further",
                                status=response.status,
                            )
                            too_large.retryable = False
                            raise too_large from None
                        return RawReply(response.status, response.headers, body, reply)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if replied or not resend or isinstance(exc, aiohttp.ClientConnectorError):
                        raise
                resend = False
                await gate.take_another(request.method, _path(request.url), "ghl_async")
        except asyncio.TimeoutError:
            error: errors.TransportError = errors.TransportError(
                f"no complete reply within {timeout.total:g} s"
            )
        except aiohttp.ClientPayloadError as exc:
            error = errors.TransportError(f"truncated reply body ({type(exc).__name__})")
        except aiohttp.ClientError as exc:
            error = errors.TransportError(_describe(exc))
        finally:
            # A send that got no reply (bad URL, closed session, connection lost) frees
            # its slot here; one that got a reply has already freed it.
            if gate.held and (pending := gate.release(None)) is not None:
                await pending
        raise error

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self._max_body
        length = response.content_length
        if length is not None and length > cap:
            raise _TooLarge
        # The stream yields decompressed bytes, so the count is of what we would hold.
        content = response.content
        first = await content.readany()
        if not first:
            return b""
        if content.at_eof() and len(first) <= cap:
            return first  # the whole body came in one piece (the common case)
        chunks = [first]
        total = len(first)
        while total <= cap and (chunk := await content.readany()):
            total += len(chunk)
            chunks.append(chunk)
        if total > cap:
            raise _TooLarge
        return first if len(chunks) == 1 else b"".join(chunks)


# Sessions being closed for abandoned clients (a task is only weakly held by its loop).
_closing: set[asyncio.Task[None]] = set()


def _close_later(session: aiohttp.ClientSession) -> None:
    task = asyncio.ensure_future(session.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _finish_now(pending: Awaitable[object]) -> None:
    # The connector of a closed loop returns an awaitable that completes without ever
    # suspending (there is nothing left to wait for): run it to the end here.
    steps = pending.__await__()
    try:
        next(steps)
    except StopIteration:
        return
    steps.close()  # it wanted to wait on a loop that is gone: give up quietly


def _path(url: str) -> str:
    """The path of a URL, for a log line (never its query)."""
    return urllib.parse.urlsplit(url).path


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
