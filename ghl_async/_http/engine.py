"""One request, start to finish: token, concurrency slot, rate slot, send, retry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import anyio

from ghl_async import errors
from ghl_async._http.auth import TokenSource
from ghl_async._http.transport import EMPTY, Request, Transport
from ghl_async._logging import get_logger, request_line
from ghl_async._sansio import RateLimitHeaders, error_for_reply, looks_like_json, request_headers
from ghl_async.ratelimit.local import LocalLimiter
from ghl_async.ratelimit.protocol import Limiter
from ghl_async.retry import RetryPolicy
from ghl_async.stats import ClientStats

T = TypeVar("T")

logger = get_logger(__name__)

__all__ = ["Capacity", "Engine", "Slots"]


class Capacity(Protocol):
    """A bound on requests in flight: :class:`Slots`, or an ``anyio.CapacityLimiter``."""

    def acquire_nowait(self) -> None: ...

    async def acquire(self) -> None: ...

    def release(self) -> None: ...


class Slots:
    """At most ``total_tokens`` requests in flight, waiters served first come, first served.

    What the engine needs of an ``anyio.CapacityLimiter``, without its per-task
    bookkeeping (a lookup of the current task on every acquire and release): a slot
    belongs to the request that took it, not to a task. ``acquire_nowait`` refuses
    while others wait, so taking a free slot without waiting stays fair. A slot freed
    while someone waits passes straight to the first of them; a waiter cancelled after
    it was handed one passes it on. One event loop at a time (the client makes new slots
    for a new loop).
    """

    __slots__ = ("_waiters", "borrowed_tokens", "total_tokens")

    def __init__(self, total_tokens: int) -> None:
        if total_tokens < 1:
            raise ValueError("total_tokens must be at least 1")
        self.total_tokens = total_tokens
        self.borrowed_tokens = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def acquire_nowait(self) -> None:
        """Take a free slot, or raise ``anyio.WouldBlock`` (none free, or others wait)."""
        if self._waiters or self.borrowed_tokens >= self.total_tokens:
            raise anyio.WouldBlock
        self.borrowed_tokens += 1

    async def acquire(self) -> None:
        """Take a slot, waiting in line for one."""
        try:
            self.acquire_nowait()
            return
        except anyio.WouldBlock:
            pass
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but leaving: the next one gets it
            elif waiter in self._waiters:  # a release may have dropped it already
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back (to the first waiter, if any, unless the bound shrank)."""
        if self._waiters and self.borrowed_tokens <= self.total_tokens and self._hand_over():
            return  # the slot changes hands: still borrowed
        self.borrowed_tokens -= 1

    @property
    def waiting(self) -> int:
        """How many wait for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def resize(self, total_tokens: int) -> None:
        """Change the bound: slots it adds go to waiters at once; past a smaller one,
        slots given back are not handed on until the count is under it.
        """
        if total_tokens < 1:
            raise ValueError("total_tokens must be at least 1")
        self.total_tokens = total_tokens
        while self.borrowed_tokens < total_tokens and self._hand_over():
            self.borrowed_tokens += 1

    def _hand_over(self) -> bool:
        """Give a slot to the first waiter still waiting; False when there is none."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False


class Engine:
    """Runs requests for a client; holds no state a request could corrupt for another."""

    def __init__(
        self,
        *,
        auth: TokenSource,
        transport: Transport,
        retry: RetryPolicy,
        capacity: Capacity,
        user_agent: str,
        stats: ClientStats,
        api_version: str | None = None,
    ) -> None:
        self.auth = auth
        self.transport = transport
        self.retry = retry
        self.capacity = capacity
        self.user_agent = user_agent
        self.stats = stats
        # The rate limiter every request goes through (``None`` until the client opens).
        self.limiter: Limiter | None = None
        # The OAuth routes take another ``Version`` than the Conversations routes.
        self.api_version = api_version
        # Seconds an attempt may take when not the transport's own (with_options).
        self.timeout: float | None = None
        # The client's bound on any wait for a rate slot (None: none).
        self.max_wait: float | None = None
        self._headers_for: tuple[str, Mapping[str, str]] | None = None

    def _headers(self, token: str) -> Mapping[str, str]:
        cached = self._headers_for
        if cached is None or cached[0] != token:
            headers = request_headers(token, self.user_agent)
            if self.api_version is not None:
                headers["Version"] = self.api_version
            cached = (token, headers)
            self._headers_for = cached
        return cached[1]

    def get(
        self,
        url: str,
        params: Mapping[str, str],
        decode: Callable[[bytes], T],
        *,
        what: str,
    ) -> Coroutine[Any, Any, T]:
        """GET ``url`` and decode the body, retrying as the policy allows (await it).

        ``what`` names the request in log lines (never the URL's query or the token).
        """
        # Hands back request()'s coroutine itself: no second coroutine frame per page.
        return self.request("GET", url, decode, what=what, params=params)

    async def request(
        self,
        method: str,
        url: str,
        decode: Callable[[bytes], T],
        *,
        what: str,
        params: Mapping[str, str] = EMPTY,
        form: Mapping[str, str] | None = None,
        json: bytes | None = None,
    ) -> T:
        """Send one request (a body as ``form`` or encoded ``json``) and decode the reply.

        Retried as the policy allows; a 401 asks the token source for a new token once.
        """
        limiter = self.limiter
        if limiter is None:
            raise RuntimeError("the client is not open: use 'async with Client(...)'")
        stats = self.stats
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            # A known token needs no coroutine per page; a provider is asked (once).
            token = self.auth.current or await self.auth.get()
            cached = self._headers_for  # _headers(token), its common case inline
            headers = cached[1] if cached and cached[0] == token else self._headers(token)
            rate = None
            request = Request(method, url, params, headers, form, json, self.timeout)
            # Timed only when someone reads the DEBUG line (one check per attempt).
            debug = logger.isEnabledFor(logging.DEBUG)
            started = time.perf_counter() if debug else 0.0
            sent_at = started
            try:
                capacity = self.capacity
                try:
                    # A free slot needs no trip through the loop (the send below is the
                    # checkpoint); nowait refuses while others wait, so it stays fair.
                    capacity.acquire_nowait()
                except anyio.WouldBlock:
                    await capacity.acquire()
                try:
                    # The in-process limiter gives a free slot with no coroutine; any
                    # wait, refusal or other limiter goes through acquire().
                    try:
                        if not isinstance(limiter, LocalLimiter):
                            raise anyio.WouldBlock
                        ticket = limiter.acquire_nowait()
                    except anyio.WouldBlock:
                        ticket = await limiter.acquire(
                            max_wait=self.max_wait, max_pause=self.retry.max_retry_after
                        )
                    if debug:
                        sent_at = time.perf_counter()
                    raw = await self.transport.send(request, limiter, ticket)
                finally:
                    capacity.release()
                rate = raw.reply.rate
                self._note_budget(rate)
                status = raw.status
                if debug:
                    _log_request(method, url, status, attempt, started, sent_at)
                error: errors.GHLError | None = (
                    None
                    if 200 <= status < 300  # the common case: no clock, no call
                    else error_for_reply(status, raw.headers, raw.body, now=time.time())
                )
                if error is None:
                    stats.server_date = raw.headers.get("Date")
                    try:
                        return decode(raw.body)
                    except Exception as exc:
                        # Whatever the bytes make the decoder raise (bad UTF-8, nesting
                        # too deep for the decoder, a wrong type) is the reply's fault:
                        # one DecodeError, the decoder's own error chained as its cause.
                        error = errors.DecodeError(
                            f"reply is not the documented JSON: {type(exc).__name__}: "
                            f"{str(exc)[:200]}",
                            status=raw.status,
                            body=raw.body,
                            retryable=not looks_like_json(raw.body),
                        )
                        error.__cause__ = exc
            except errors.TransportError as exc:
                error = exc
                if debug:
                    _log_request(method, url, None, attempt, started, sent_at, exc)
            assert error is not None
            if isinstance(error, errors.RateLimitError):
                stats.throttled += 1
                logger.info("%s: 429 from the server (%s)", what, error.message)
            if (
                isinstance(error, errors.AuthenticationError)
                and self.auth.refreshable
                and not refreshed
            ):
                refreshed = True
                attempt -= 1
                logger.info("%s: 401, asking the token provider for a new token", what)
                await self.auth.refresh(token)
                continue
            if not self.retry.should_retry(error, attempt):
                raise error
            delay = self.retry.delay(
                error, attempt, rate_interval=rate.interval if rate is not None else None
            )
            stats.retries += 1
            logger.info(
                "%s: retrying (attempt %d of %d) in %.2f s after %s",
                what,
                attempt + 1,
                self.retry.max_attempts,
                delay,
                error,
            )
            await anyio.sleep(delay)

    def _note_budget(self, rate: RateLimitHeaders) -> None:
        stats = self.stats
        if (rate.max_requests, rate.interval) != (
            stats.server_max_requests,
            stats.server_interval,
        ) and rate.max_requests is not None:
            logger.info(
                "the server announces a budget of %d per %g s",
                rate.max_requests,
                rate.interval if rate.interval is not None else stats.server_interval or 0,
            )
        if rate.remaining is not None:
            stats.server_remaining = rate.remaining
        if rate.daily_remaining is not None:
            stats.daily_remaining = rate.daily_remaining
        if rate.max_requests is not None:
            stats.server_max_requests = rate.max_requests
        if rate.interval is not None:
            stats.server_interval = rate.interval


def _log_request(
    method: str,
    url: str,
    status: int | None,
    attempt: int,
    started: float,
    sent_at: float,
    error: BaseException | None = None,
) -> None:
    """The DEBUG line of one attempt (:func:`ghl_async._logging.request_line`)."""
    line = request_line(
        method,
        url,
        status=status,
        latency=time.perf_counter() - sent_at,
        attempt=attempt,
        limiter_wait=sent_at - started,
    )
    if error is not None:
        line += f": {type(error).__name__}"
    logger.debug("%s", line)
