"""The client: pages of one conversation, and many conversations at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from types import TracebackType
from typing import Literal, overload

import aiohttp
import anyio

from . import errors
from ._auth import TokenProvider, TokenSource
from ._engine import Engine
from ._fanout import FanOutOptions, IdSource, run_fan_out
from ._transport import DEFAULT_MAX_BODY_BYTES, AiohttpTransport
from ._validation import (
    MAX_PAGE_SIZE,
    check_base_url,
    check_id,
    check_page_size,
    check_types,
)
from ._version import __version__
from .models import Conversation, Message, MessagesPage, decode_conversations, decode_page
from .ratelimit import Limiter, RateLimit, shared_limiter, token_key
from .retry import RetryPolicy
from .stats import ClientStats

__all__ = ["DEFAULT_BASE_URL", "Client", "PageHook"]

DEFAULT_BASE_URL = "https://services.leadconnectorhq.com"

#: Called with ``(conversation_id, page)`` for every page a fan-out hands out.
PageHook = Callable[[str, MessagesPage], None]

Types = Iterable[str] | str | None


class Client:
    """An asyncio client for HighLevel's ``GET /conversations/{id}/messages``.

    Make it once and keep it for the life of your app or job. It opens on first use
    (``await client.aclose()`` closes it), or use it as a context manager::

        async with Client(token) as client:
            page = await client.get_messages("tDtDnQdgm2LXpyiqYvZ6", limit=50)
            async for message in client.iter_messages("tDtDnQdgm2LXpyiqYvZ6"):
                ...
            async for conversation_id, message in client.fan_out(ids):
                ...

    Args:
        token: a Private Integration Token or OAuth access token, or an async callable
            returning the current token (asked again once after a 401).
        base_url: the API root; https unless it is a loopback address or
            ``allow_insecure=True``.
        timeout: seconds one attempt may take.
        retry: how failures are retried (:class:`RetryPolicy`).
        max_concurrency: requests in flight at once, at most.
        session: a caller-owned :class:`aiohttp.ClientSession`; the client never
            closes it.
        rate_limit: a cap on the budget; by default the client follows the budget the
            server announces (100 per 10 s until it has said).
        limiter: a :class:`~ghl_async.ratelimit.Limiter` to share explicitly (for
            instance :class:`ghl_async.redis.RedisLimiter` across processes). By
            default all clients of one token in a process share one limiter.
        allow_insecure: allow a plain-http ``base_url`` off loopback.
        user_agent: the ``User-Agent`` header.
        max_body_bytes: the largest reply body read (after decompression); a longer
            one fails that request with :class:`~ghl_async.errors.TransportError`.
        max_wait: the longest a request waits for a rate slot, in seconds (``None``:
            as long as the budget takes). A request that would wait longer fails at
            once with :class:`~ghl_async.errors.RateLimitError`, ``retry_after`` saying
            when a slot is expected; nothing is sent. For web handlers.
    """

    def __init__(
        self,
        token: str | TokenProvider,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 16,
        session: aiohttp.ClientSession | None = None,
        rate_limit: RateLimit | None = None,
        limiter: Limiter | None = None,
        allow_insecure: bool = False,
        user_agent: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_wait: float | None = None,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise TypeError("max_body_bytes must be an int")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self._auth = TokenSource(token, timeout=float(timeout))
        self._base_url = check_base_url(base_url, allow_insecure=allow_insecure)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise TypeError("max_concurrency must be an int")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError("rate_limit must be a RateLimit")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise TypeError("limiter must implement the Limiter protocol")
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError("session must be an aiohttp.ClientSession")
        self._rate_limit = rate_limit
        self._explicit_limiter = limiter
        self._max_concurrency = max_concurrency
        self.stats = ClientStats()
        """Live counters: requests, retries, throttled (429s), pages, messages, budget."""
        self._engine = Engine(
            auth=self._auth,
            transport=AiohttpTransport(
                session,
                max_connections=max_concurrency,
                timeout=float(timeout),
                stats=self.stats,
                max_body_bytes=max_body_bytes,
            ),
            retry=retry if retry is not None else RetryPolicy(),
            capacity=anyio.CapacityLimiter(max_concurrency),
            user_agent=user_agent or f"ghl-async/{__version__}",
            stats=self.stats,
        )
        if max_wait is not None and (isinstance(max_wait, bool) or not max_wait >= 0):
            raise ValueError("max_wait must be a number of seconds >= 0, or None")
        self._engine.max_wait = max_wait
        self._tasks: set[asyncio.Task[None]] = set()
        # The event loop the limiter, slots and session belong to (None: never opened).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "open" if self._engine.transport.is_open else "closed"
        return (
            f"Client(base_url={self._base_url!r}, max_concurrency={self._max_concurrency}, "
            f"token=<redacted>, {state})"
        )

    @property
    def limiter(self) -> Limiter | None:
        """The rate limiter this client sends through (set once the client is open)."""
        return self._engine.limiter

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the HTTP session and pick the limiter; ``async with`` does this for you.

        A client opened under one event loop and used under another (a second
        ``asyncio.run()``) opens again for the new loop: the session, the shared
        limiter and the concurrency slots belong to a loop.
        """
        loop = asyncio.get_running_loop()
        engine = self._engine
        if self._loop is not loop:
            if self._loop is not None:
                engine.transport.abandon()
                engine.capacity = anyio.CapacityLimiter(self._max_concurrency)
                self._auth.forget_loop()
            engine.limiter = (
                self._explicit_limiter
                if self._explicit_limiter is not None
                else shared_limiter(loop, token_key(self._auth.identity), self._rate_limit)
            )
            self._loop = loop
        await engine.transport.open()
        self._closed = False

    async def aclose(self) -> None:
        """Stop running fan-outs and close the session (if the client opened it)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(tasks)
        await self._engine.transport.aclose()

    def __del__(self) -> None:
        # Dropped without aclose() (a notebook cell run again): close the session
        # quietly rather than leave aiohttp to print "Unclosed client session".
        # try/except, not contextlib.suppress: at interpreter exit module globals may
        # be gone already, and a failed __init__ leaves no engine.
        try:  # noqa: SIM105
            self._engine.transport.abandon()
        except Exception:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "the client is closed: open it again ('async with client') or make a new one"
            )

    async def _ready(self) -> None:
        """Open the client on first use (or under a new event loop); raise if closed."""
        self._check_open()
        if self._loop is not asyncio.get_running_loop():
            await self.open()

    # -- one conversation ------------------------------------------------------------

    def _messages_url(self, conversation_id: str) -> str:
        return f"{self._base_url}/conversations/{conversation_id}/messages"

    async def get_messages(
        self,
        conversation_id: str,
        last_message_id: str | None = None,
        limit: int | None = None,
        types: Types = None,
    ) -> MessagesPage:
        """Fetch one page of a conversation's messages, newest first.

        Args:
            conversation_id: the conversation.
            last_message_id: the cursor: return messages after this one.
            limit: messages per page, 1 to 100; the server's default (20) when omitted.
            types: only these message types (:class:`FilterType` names).

        Raises:
            ValueError, TypeError: bad arguments, before any request.
            ghl_async.errors.GHLError: what the server or the network said, after retries.
        """
        check_id(conversation_id, "conversation_id")
        params: dict[str, str] = {}
        if last_message_id is not None:
            params["lastMessageId"] = check_id(last_message_id, "last_message_id")
        if limit is not None:
            params["limit"] = str(check_page_size(limit, "limit"))
        type_filter = check_types(types)
        if type_filter is not None:
            params["type"] = type_filter
        await self._ready()
        try:
            return await self._get_page(conversation_id, params)
        except errors.GHLError as exc:
            errors.locate(exc, conversation_id, last_message_id)
            raise

    async def _get_page(self, conversation_id: str, params: dict[str, str]) -> MessagesPage:
        page = await self._engine.get(
            self._messages_url(conversation_id),
            params,
            decode_page,
            what=f"conversation {conversation_id}",
        )
        self.stats.pages += 1
        self.stats.messages += len(page.messages)
        self.stats.repaired_fields += page.repaired
        self.stats.dropped_messages += page.dropped
        return page

    def iter_pages(
        self,
        conversation_id: str,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        last_message_id: str | None = None,
    ) -> AsyncGenerator[MessagesPage, None]:
        """Every page of a conversation, newest first, following ``lastMessageId``.

        Stops after a page with ``nextPage`` false or an empty page (an empty final
        page is still yielded, so ``page.is_last`` marks the end). Resumes after
        ``last_message_id`` when given.

        Raises:
            ghl_async.errors.PaginationError: the server repeated a cursor.
        """
        check_id(conversation_id, "conversation_id")
        check_page_size(page_size, "page_size")
        type_filter = check_types(types)
        if last_message_id is not None:
            check_id(last_message_id, "last_message_id")
        return self._iter_pages(conversation_id, type_filter, page_size, last_message_id)

    async def _iter_pages(
        self,
        conversation_id: str,
        type_filter: str | None,
        page_size: int,
        cursor: str | None,
    ) -> AsyncGenerator[MessagesPage, None]:
        await self._ready()
        seen: set[str] = set()
        base: dict[str, str] = {"limit": str(page_size)}
        if type_filter is not None:
            base["type"] = type_filter
        while True:
            params = base if cursor is None else {**base, "lastMessageId": cursor}
            try:
                page = await self._get_page(conversation_id, params)
            except errors.GHLError as exc:
                # ``cursor`` asked for the page that failed: every message before it
                # was handed out, so it is where to resume.
                errors.locate(exc, conversation_id, cursor)
                raise
            if page.is_last:
                yield page
                return
            # The next cursor is checked before the page goes out, so that on an error
            # ``cursor`` is still exactly where to resume: nothing after it handed out.
            following = page.last_message_id or page.messages[-1].id
            if following in seen or following == cursor:
                raise errors.locate(
                    errors.PaginationError(
                        f"the server repeated the cursor {following!r}: "
                        "stopping instead of looping"
                    ),
                    conversation_id,
                    cursor,
                )
            try:
                check_id(following, "the server's lastMessageId")
            except (TypeError, ValueError) as exc:
                # Not an id we could send back: the reply is not the documented JSON.
                raise errors.locate(errors.DecodeError(str(exc)), conversation_id, cursor) from exc
            seen.add(following)
            yield page
            cursor = following

    async def iter_messages(
        self,
        conversation_id: str,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        last_message_id: str | None = None,
    ) -> AsyncGenerator[Message, None]:
        """Every message of a conversation, newest first (see :meth:`iter_pages`)."""
        pages = self.iter_pages(conversation_id, types, page_size, last_message_id)
        async with aclosing(pages):
            async for page in pages:
                for message in page.messages:
                    yield message

    # -- many conversations ----------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _fan_out_items(
        self,
        conversation_ids: IdSource,
        types: Types,
        page_size: int,
        concurrency: int | None,
        return_exceptions: bool,
    ) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]:
        check_page_size(page_size, "page_size")
        type_filter = check_types(types)
        if concurrency is None:
            concurrency = self._max_concurrency
        elif isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError("concurrency must be an int")
        elif concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if isinstance(conversation_ids, (str, bytes)):
            raise TypeError("conversation_ids must be an iterable of ids, not a single str")
        self._check_open()

        def pages(conversation_id: str) -> AsyncGenerator[MessagesPage, None]:
            check_id(conversation_id, "conversation_id")
            return self._iter_pages(conversation_id, type_filter, page_size, None)

        options = FanOutOptions(
            concurrency=concurrency,
            return_exceptions=return_exceptions,
            buffer=max(2, concurrency // 2),
        )
        return run_fan_out(conversation_ids, pages, options, self._spawn, self._ready)

    @overload
    def fan_out_pages(
        self,
        conversation_ids: IdSource,
        types: Types = ...,
        page_size: int = ...,
        concurrency: int | None = ...,
        return_exceptions: Literal[False] = ...,
        on_page: PageHook | None = ...,
    ) -> AsyncGenerator[tuple[str, MessagesPage], None]: ...

    @overload
    def fan_out_pages(
        self,
        conversation_ids: IdSource,
        types: Types = ...,
        page_size: int = ...,
        concurrency: int | None = ...,
        *,
        return_exceptions: Literal[True],
        on_page: PageHook | None = ...,
    ) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]: ...

    def fan_out_pages(
        self,
        conversation_ids: IdSource,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        concurrency: int | None = None,
        return_exceptions: bool = False,
        on_page: PageHook | None = None,
    ) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]:
        """Pages of many conversations, fetched concurrently, as they arrive.

        ``conversation_ids`` may be any iterable or async iterable; it is read lazily.
        Each conversation's pages come in the server's order; conversations interleave.
        Fetching runs at most ``concurrency`` (default ``max_concurrency``) requests at
        once, under the client's rate limiter, and waits for a slow consumer.

        With ``return_exceptions=False`` the first error that retries cannot fix stops
        the rest and is raised as itself. With ``return_exceptions=True`` a failing
        conversation yields one ``(conversation_id, error)`` item, ``error.last_message_id``
        being the cursor to resume it from, and the others go on; a refused token
        (:class:`~ghl_async.errors.AuthenticationError`) or a spent daily budget
        (:class:`~ghl_async.errors.DailyLimitExceeded`) still stops everything and is
        raised, since every other conversation would fail the same way. Whatever the
        server sends for one conversation (a cursor that is not an id, bytes that are not
        UTF-8, JSON too deep, a body over ``max_body_bytes``) is that conversation's
        :class:`~ghl_async.errors.GHLError`, the underlying error chained as its
        ``__cause__``. An error of your own (an id source or token provider raising, a
        bad id) stops the fan-out and is raised as itself, never in an
        ``ExceptionGroup``.

        Breaking out of the loop, an exception in its body or cancelling the consuming
        task stops every request in flight; the client stays usable. If you keep the
        iterator in a variable, Python cannot close it for you when you break: wrap it in
        ``contextlib.aclosing`` (until closed, fetching just pauses on the full buffer).
        """
        items = self._fan_out_items(
            conversation_ids, types, page_size, concurrency, return_exceptions
        )
        return _pages_only(items, on_page)

    @overload
    def fan_out(
        self,
        conversation_ids: IdSource,
        types: Types = ...,
        page_size: int = ...,
        concurrency: int | None = ...,
        return_exceptions: Literal[False] = ...,
        on_page: PageHook | None = ...,
    ) -> AsyncGenerator[tuple[str, Message], None]: ...

    @overload
    def fan_out(
        self,
        conversation_ids: IdSource,
        types: Types = ...,
        page_size: int = ...,
        concurrency: int | None = ...,
        *,
        return_exceptions: Literal[True],
        on_page: PageHook | None = ...,
    ) -> AsyncGenerator[tuple[str, Message | errors.GHLError], None]: ...

    def fan_out(
        self,
        conversation_ids: IdSource,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        concurrency: int | None = None,
        return_exceptions: bool = False,
        on_page: PageHook | None = None,
    ) -> AsyncGenerator[tuple[str, Message | errors.GHLError], None]:
        """Messages of many conversations as ``(conversation_id, message)`` pairs.

        The same as :meth:`fan_out_pages`, one message at a time::

            async for conversation_id, message in client.fan_out(ids):
                rows.append(msgspec.to_builtins(message))
        """
        items = self._fan_out_items(
            conversation_ids, types, page_size, concurrency, return_exceptions
        )
        return _messages_only(_pages_only(items, on_page))

    # -- conversations of a location -------------------------------------------------

    def iter_conversations(
        self,
        location_id: str,
        *,
        page_size: int = MAX_PAGE_SIZE,
        **filters: str,
    ) -> AsyncGenerator[Conversation, None]:
        """Every conversation of a location, through ``GET /conversations/search``.

        Pages with the ``startAfterDate`` cursor (the sort value of the last item) and
        stops on a short page. ``filters`` are passed as query parameters (for instance
        ``status="unread"``, ``sort="asc"``).
        """
        check_id(location_id, "location_id")
        check_page_size(page_size, "page_size")
        for name, value in filters.items():
            if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
                raise ValueError(f"filter {name} must be a non-empty str")
        return self._iter_conversations(location_id, page_size, dict(filters))

    async def _iter_conversations(
        self, location_id: str, page_size: int, filters: dict[str, str]
    ) -> AsyncGenerator[Conversation, None]:
        await self._ready()
        url = f"{self._base_url}/conversations/search"
        params = {**filters, "locationId": location_id, "limit": str(page_size)}
        seen_cursor: set[str] = set()
        while True:
            batch = await self._engine.get(
                url, params, decode_conversations, what=f"location {location_id} search"
            )
            for conversation in batch:
                yield conversation
            if len(batch) < page_size:
                return
            last = batch[-1]
            cursor = str(last.sort[0]) if last.sort else str(last.last_message_date or "")
            if not cursor or cursor in seen_cursor:
                return
            seen_cursor.add(cursor)
            params = {**params, "startAfterDate": cursor}


async def _pages_only(
    items: AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None],
    on_page: PageHook | None,
) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]:
    async with aclosing(items):
        async for conversation_id, item in items:
            if on_page is not None and isinstance(item, MessagesPage):
                on_page(conversation_id, item)
            yield conversation_id, item


async def _messages_only(
    pages: AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None],
) -> AsyncGenerator[tuple[str, Message | errors.GHLError], None]:
    async with aclosing(pages):
        async for conversation_id, item in pages:
            if isinstance(item, MessagesPage):
                for message in item.messages:
                    yield conversation_id, message
            else:
                yield conversation_id, item
