"""The client: pages of one conversation, and many conversations at once."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping
from contextlib import aclosing
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import msgspec

from ghl_async import errors
from ghl_async._http.aiohttp_transport import DEFAULT_MAX_BODY_BYTES, AiohttpTransport
from ghl_async._http.auth import TokenProvider, TokenSource
from ghl_async._http.emails import MessageWithEmails, attach_emails
from ghl_async._http.engine import Engine, Slots
from ghl_async._http.export_route import LocationExport, LocationPage, admitted, resume_token
from ghl_async._http.fanout import FanOutOptions, IdSource, run_fan_out
from ghl_async._http.lifecycle import Lifecycle
from ghl_async._http.messages import MessageStream, conversation_items
from ghl_async._http.paginate import hand_over, paginate
from ghl_async._params import (
    EXPORT_PAGE_MAX,
    check_cursor,
    check_since,
    cut_conversations_since,
    cut_since,
    export_params,
    next_export_params,
    next_messages_params,
    next_search_params,
)
from ghl_async._validation import (
    MAX_PAGE_SIZE,
    check_base_url,
    check_id,
    check_int,
    check_page_size,
    check_types,
)
from ghl_async._version import __version__
from ghl_async.models import (
    Conversation,
    EmailMessage,
    ExportPage,
    Message,
    MessagesPage,
    decode_conversations,
    decode_email,
    decode_export_page,
    decode_message,
    decode_page,
)
from ghl_async.ratelimit import Limiter, RateLimit
from ghl_async.ratelimit.local import shared_limiter, token_key
from ghl_async.retry import RetryPolicy
from ghl_async.stats import ClientStats

if TYPE_CHECKING:  # aiohttp itself is imported by _transport.py only
    import aiohttp

__all__ = ["DEFAULT_BASE_URL", "Client", "LocationPage", "MessageWithEmails", "PageHook"]


class _Keep:
    """The default of a ``with_options`` setting that may be ``None``: keep the client's."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<the client's own>"


_KEEP = _Keep()

DEFAULT_BASE_URL = "https://services.leadconnectorhq.com"

#: Called with ``(conversation_id, page)`` for every page a fan-out hands out.
PageHook = Callable[[str, MessagesPage], None]

Types = Iterable[str] | str | None
P = TypeVar("P")


class Client(Lifecycle):
    """An asyncio client for HighLevel's Conversations API: a conversation's messages
    (one page, every page, many conversations at once), a location's conversations, and
    single messages and email bodies.

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
            instance :class:`ghl_async.ratelimit.redis.RedisLimiter` across processes). By
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

    _closed_message = "the client is closed: open it again ('async with client') or make a new one"

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
        check_int(max_body_bytes, "max_body_bytes", 1)
        self._auth = TokenSource(token, timeout=float(timeout))
        self._base_url = check_base_url(base_url, allow_insecure=allow_insecure)
        check_int(max_concurrency, "max_concurrency", 1)
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError("rate_limit must be a RateLimit")
        if limiter is not None and not isinstance(limiter, Limiter):
            raise TypeError("limiter must implement the Limiter protocol")
        self._rate_limit = rate_limit
        self._explicit_limiter = limiter
        self._max_concurrency = max_concurrency
        self.stats = ClientStats()
        """Live counters: requests, retries, throttled (429s), pages, messages, budget."""
        transport = AiohttpTransport(
            session,
            max_connections=max_concurrency,
            timeout=float(timeout),
            stats=self.stats,
            max_body_bytes=max_body_bytes,
        )
        self._engine = Engine(
            auth=self._auth,
            transport=transport,
            retry=retry if retry is not None else RetryPolicy(),
            capacity=Slots(max_concurrency),
            user_agent=user_agent or f"ghl-async/{__version__}",
            stats=self.stats,
        )
        if max_wait is not None and (isinstance(max_wait, bool) or not max_wait >= 0):
            raise ValueError("max_wait must be a number of seconds >= 0, or None")
        self._engine.max_wait = max_wait
        self._parent: Client | None = None  # set on a with_options view
        super().__init__(transport)

    def __repr__(self) -> str:
        state = "open" if self._transport.is_open else "closed"
        return (
            f"Client(base_url={self._base_url!r}, max_concurrency={self._max_concurrency}, "
            f"token=<redacted>, {state})"
        )

    @property
    def limiter(self) -> Limiter | None:
        """The rate limiter this client sends through (set once the client is open)."""
        return self._engine.limiter

    def with_options(
        self,
        *,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        max_wait: float | _Keep | None = _KEEP,
    ) -> Client:
        """A view of this client with other settings for the calls made through it.

        As openai's ``client.with_options(...)``: the returned client shares this one's
        connections, rate limiter, token, concurrency and :attr:`stats`; only how its
        own calls retry and how long they may take differ. A web handler wants a short
        timeout, no retries and a bound on the wait for a rate slot, while a batch job
        on the same client keeps the defaults::

            fast = client.with_options(max_retries=0, timeout=5.0, max_wait=2.0)
            page = await fast.get_messages(conversation_id)

        It needs no ``async with`` of its own: it is open while this client is, and
        closing it closes nothing (close this client).

        Args:
            max_retries: retries after the first attempt (``0``: none); a shorthand for
                ``retry=RetryPolicy(max_attempts=max_retries + 1)`` on this client's
                policy.
            retry: a whole :class:`RetryPolicy` instead.
            timeout: seconds one attempt may take.
            max_wait: the longest a call waits for a rate slot (``None``: as long as the
                budget takes); by default this client's.

        Raises:
            TypeError, ValueError: a bad setting.
        """
        engine = self._engine
        policy = engine.retry if retry is None else retry
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError("retry must be a RetryPolicy")
        if max_retries is not None:
            check_int(max_retries, "max_retries", 0)
            policy = dataclasses.replace(policy, max_attempts=max_retries + 1)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError("timeout must be a number of seconds")
            if not timeout > 0:
                raise ValueError("timeout must be positive")
        if (
            not isinstance(max_wait, _Keep)
            and max_wait is not None
            and (isinstance(max_wait, bool) or not max_wait >= 0)
        ):
            raise ValueError("max_wait must be a number of seconds >= 0, or None")
        view = copy.copy(self)  # the same transport, token, stats, tasks: shared
        view._engine = copy.copy(engine)
        view._engine.retry = policy
        if timeout is not None:
            view._engine.timeout = float(timeout)
        if not isinstance(max_wait, _Keep):
            view._engine.max_wait = max_wait
        view._parent = self
        return view

    # -- life cycle (Lifecycle): open and aclose restated for the API reference, which
    # shows no inherited members

    async def open(self) -> None:
        """Open the HTTP session and pick the limiter; ``async with`` does this for you.

        A client opened under one event loop and used under another (a second
        ``asyncio.run()``) opens again for the new loop: the session, the shared
        limiter and the concurrency slots belong to a loop.
        """
        if self._parent is not None:  # a with_options view: its client's session
            self._parent._check_open()  # closed stays closed, as for the client itself
            await self._parent.open()
            self._engine.limiter = self._parent._engine.limiter
            self._engine.capacity = self._parent._engine.capacity
            self._loop = self._parent._loop
            return
        await super().open()

    async def aclose(self) -> None:
        """Stop running fan-outs and close the session (if the client opened it).

        On a client from :meth:`with_options` it closes nothing: the session is its
        parent's.
        """
        if self._parent is not None:
            return
        await super().aclose()

    def _bind(self, loop: asyncio.AbstractEventLoop, *, moved: bool) -> None:
        # The limiter, slots and token lock belong to a loop.
        engine = self._engine
        if moved:
            engine.capacity = Slots(self._max_concurrency)
            self._auth.forget_loop()
        engine.limiter = (
            self._explicit_limiter
            if self._explicit_limiter is not None
            else shared_limiter(loop, token_key(self._auth.identity), self._rate_limit)
        )

    def __del__(self) -> None:
        # Dropped without aclose() (a notebook cell run again): close the session
        # quietly rather than leave aiohttp to print "Unclosed client session".
        # try/except, not contextlib.suppress: at interpreter exit module globals may
        # be gone already, and a failed __init__ leaves no transport.
        try:
            if self._parent is None:  # a with_options view owns nothing
                self._transport.abandon()
        except Exception:
            pass

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
        self._count_page(page)
        return page

    def _count_page(self, page: MessagesPage | ExportPage) -> None:
        """Count a page as it arrives (``on_page`` of every paging loop)."""
        stats = self.stats
        stats.pages += 1
        stats.messages += len(page.messages)
        stats.repaired_fields += page.repaired
        stats.dropped_messages += page.dropped

    def iter_pages(
        self,
        conversation_id: str,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        last_message_id: str | None = None,
        *,
        since: datetime | None = None,
        email_bodies: bool = False,
    ) -> AsyncGenerator[MessagesPage, None]:
        """Every page of a conversation, newest first, following ``lastMessageId``.

        Stops after a page with ``nextPage`` false or an empty page (an empty final
        page is still yielded, so ``page.is_last`` marks the end). Resumes after
        ``last_message_id`` when given.

        ``since`` (timezone-aware): only messages dated at or after it. Paging stops at
        the first older message (left out, and its page is the last, ``is_last``
        true): a conversation with nothing new costs one request. A message dated
        exactly ``since`` is delivered.

        ``email_bodies=True``: email messages come with their bodies (see :meth:`fan_out`).

        Raises:
            ghl_async.errors.PaginationError: the server repeated a cursor.
        """
        check_id(conversation_id, "conversation_id")
        check_page_size(page_size, "page_size")
        type_filter = check_types(types)
        if last_message_id is not None:
            check_id(last_message_id, "last_message_id")
        if since is not None:
            check_since(since)
        return self._iter_pages(
            conversation_id,
            type_filter,
            page_size,
            last_message_id,
            since=since,
            email_bodies=email_bodies,
        )

    def _iter_pages(
        self,
        conversation_id: str,
        type_filter: str | None,
        page_size: int,
        cursor: str | None,
        *,
        since: datetime | None = None,
        email_bodies: bool = False,
    ) -> AsyncGenerator[MessagesPage, None]:
        params: dict[str, str] = {"limit": str(page_size)}
        if type_filter is not None:
            params["type"] = type_filter
        if cursor is not None:
            params["lastMessageId"] = cursor
        pages = self._paged(
            self._messages_url(conversation_id),
            params,
            decode_page,
            next_messages_params,
            what=f"conversation {conversation_id}",
            conversation_id=conversation_id,
            check_cursor=_check_server_cursor,
            on_page=self._count_page,
        )
        if since is None and not email_bodies:
            return pages
        return self._refined(pages, since, email_bodies)

    async def _refined(
        self,
        pages: AsyncGenerator[MessagesPage, None],
        since: datetime | None,
        email_bodies: bool,
    ) -> AsyncGenerator[MessagesPage, None]:
        """Pages cut at ``since`` (the first older message ends paging), bodies attached."""
        async with aclosing(pages):
            async for page in pages:
                messages: list[Message] = page.messages
                reached = False
                if since is not None:
                    messages, reached = cut_since(messages, since)
                if email_bodies:
                    messages = await attach_emails(messages, self._email, self._max_concurrency)
                yield msgspec.structs.replace(
                    page, messages=messages, next_page=page.next_page and not reached
                )
                if reached:
                    return  # closing ``pages`` here: no request for the next page

    def _paged(
        self,
        url: str,
        params: Mapping[str, str],
        decode: Callable[[bytes], P],
        next_params: Callable[[Mapping[str, str], P], Mapping[str, str] | None],
        *,
        what: str,
        conversation_id: str | None = None,
        check_cursor: Callable[[str], object] | None = None,
        on_page: Callable[[P], None] | None = None,
    ) -> AsyncGenerator[P, None]:
        return paginate(
            self._engine,
            url,
            params,
            decode,
            next_params,
            what=what,
            conversation_id=conversation_id,
            check_cursor=check_cursor,
            on_page=on_page,
            ready=self._ready,  # opens the client on first use, in the consumer's loop
        )

    def iter_messages(
        self,
        conversation_id: str,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        last_message_id: str | None = None,
        *,
        since: datetime | None = None,
    ) -> AsyncGenerator[Message, None]:
        """Every message of a conversation, newest first (see :meth:`iter_pages`).

        ``since``: only messages dated at or after it (one request when there are none).
        """
        pages = self.iter_pages(conversation_id, types, page_size, last_message_id, since=since)
        return MessageStream(pages, _messages_of)

    # -- single messages -------------------------------------------------------------

    async def get_message(self, message_id: str) -> Message:
        """Fetch one message by id (``GET /conversations/messages/{id}``).

        Raises:
            ValueError, TypeError: ``message_id`` is not an id, before any request.
            ghl_async.errors.NotFoundError: no such message.
            ghl_async.errors.GHLError: what the server or the network said, after retries.
        """
        check_id(message_id, "message_id")
        await self._ready()
        return await self._engine.get(
            f"{self._base_url}/conversations/messages/{message_id}",
            {},
            decode_message,
            what=f"message {message_id}",
        )

    async def get_email(self, email_message_id: str) -> EmailMessage:
        """Fetch one email body (``GET /conversations/messages/email/{id}``).

        ``email_message_id`` is one of an email message's ``meta.email.message_ids``.

        Raises:
            ValueError, TypeError: ``email_message_id`` is not an id, before any request.
            ghl_async.errors.NotFoundError: no such email.
            ghl_async.errors.GHLError: what the server or the network said, after retries.
        """
        check_id(email_message_id, "email_message_id")
        await self._ready()
        return await self._email(email_message_id)

    def _email(self, email_message_id: str) -> Coroutine[Any, Any, EmailMessage]:
        """:meth:`get_email` on a client already open (the email bodies of a page being
        read): the request's own coroutine, no frame of its own.
        """
        check_id(email_message_id, "email_message_id")
        return self._engine.request(
            "GET",
            f"{self._base_url}/conversations/messages/email/{email_message_id}",
            decode_email,
            what=f"email {email_message_id}",
        )

    # -- many conversations ----------------------------------------------------------

    def _fan_out_items(
        self,
        conversation_ids: IdSource,
        types: Types,
        page_size: int,
        concurrency: int | None,
        return_exceptions: bool,
        since: datetime | None = None,
        email_bodies: bool = False,
    ) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]:
        check_page_size(page_size, "page_size")
        if since is not None:
            check_since(since)
        type_filter = check_types(types)
        if concurrency is None:
            concurrency = self._max_concurrency
        else:
            check_int(concurrency, "concurrency", 1)
        if isinstance(conversation_ids, (str, bytes)):
            raise TypeError("conversation_ids must be an iterable of ids, not a single str")
        self._check_open()

        def pages(conversation_id: str) -> AsyncGenerator[MessagesPage, None]:
            check_id(conversation_id, "conversation_id")
            return self._iter_pages(
                conversation_id,
                type_filter,
                page_size,
                None,
                since=since,
                email_bodies=email_bodies,
            )

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
        since: datetime | None = ...,
        email_bodies: bool = ...,
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
        since: datetime | None = ...,
        email_bodies: bool = ...,
    ) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]: ...

    def fan_out_pages(
        self,
        conversation_ids: IdSource,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        concurrency: int | None = None,
        return_exceptions: bool = False,
        on_page: PageHook | None = None,
        since: datetime | None = None,
        email_bodies: bool = False,
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

        ``since`` (timezone-aware): each conversation only down to its first message
        older than ``since`` (as :meth:`iter_pages`): one request for a conversation with
        nothing new. ``email_bodies=True``: each email message comes as a
        :class:`MessageWithEmails` with its bodies in ``emails`` (fetched concurrently,
        under the same limiter and ``concurrency``, before its page is handed out, so
        messages stay in order).
        """
        items = self._fan_out_items(
            conversation_ids,
            types,
            page_size,
            concurrency,
            return_exceptions,
            since=since,
            email_bodies=email_bodies,
        )
        # No hook: the fan-out's own iterator, with no layer between it and the caller.
        return items if on_page is None else _pages_only(items, on_page)

    @overload
    def fan_out(
        self,
        conversation_ids: IdSource,
        types: Types = ...,
        page_size: int = ...,
        concurrency: int | None = ...,
        return_exceptions: Literal[False] = ...,
        on_page: PageHook | None = ...,
        since: datetime | None = ...,
        email_bodies: bool = ...,
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
        since: datetime | None = ...,
        email_bodies: bool = ...,
    ) -> AsyncGenerator[tuple[str, Message | errors.GHLError], None]: ...

    def fan_out(
        self,
        conversation_ids: IdSource,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        concurrency: int | None = None,
        return_exceptions: bool = False,
        on_page: PageHook | None = None,
        since: datetime | None = None,
        email_bodies: bool = False,
    ) -> AsyncGenerator[tuple[str, Message | errors.GHLError], None]:
        """Messages of many conversations as ``(conversation_id, message)`` pairs.

        The same as :meth:`fan_out_pages`, one message at a time::

            async for conversation_id, message in client.fan_out(ids):
                rows.append(msgspec.to_builtins(message))
        """
        items = self._fan_out_items(
            conversation_ids,
            types,
            page_size,
            concurrency,
            return_exceptions,
            since=since,
            email_bodies=email_bodies,
        )
        pages = items if on_page is None else _pages_only(items, on_page)
        return MessageStream(pages, conversation_items)

    # -- conversations of a location -------------------------------------------------

    def iter_conversations(
        self,
        location_id: str,
        *,
        page_size: int = MAX_PAGE_SIZE,
        since: datetime | None = None,
        **filters: str,
    ) -> AsyncGenerator[Conversation, None]:
        """Every conversation of a location, through ``GET /conversations/search``.

        Pages with the ``startAfterDate`` cursor (the sort value of the last item) and
        stops on a short page. ``filters`` are passed as query parameters (for instance
        ``status="unread"``, ``sort="asc"``).

        ``since`` (timezone-aware): only conversations whose last message is dated at
        or after it. The search is sorted by last message date, newest first
        (``sortBy=last_message_date``, ``sort=desc``) and stops at the first older
        conversation, so finding what changed costs in proportion to what changed.
        """
        check_id(location_id, "location_id")
        check_page_size(page_size, "page_size")
        for name, value in filters.items():
            if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
                raise ValueError(f"filter {name} must be a non-empty str")
        if since is not None:
            check_since(since)
            if filters.get("sort", "desc") != "desc":
                raise ValueError("since needs the newest-first order (sort='desc')")
            filters = {"sortBy": "last_message_date", "sort": "desc", **filters}
        return self._iter_conversations(location_id, page_size, dict(filters), since)

    async def _iter_conversations(
        self,
        location_id: str,
        page_size: int,
        filters: dict[str, str],
        since: datetime | None = None,
    ) -> AsyncGenerator[Conversation, None]:
        params = {**filters, "locationId": location_id, "limit": str(page_size)}
        batches = self._paged(
            f"{self._base_url}/conversations/search",
            params,
            decode_conversations,
            next_search_params,
            what=f"location {location_id} search",
        )
        async with aclosing(batches):
            async for batch in batches:
                kept, reached = batch, False
                if since is not None:
                    kept, reached = cut_conversations_since(batch, since)
                for conversation in kept:
                    yield conversation
                if reached:
                    return

    # -- a whole location: the export endpoint ---------------------------------------

    def iter_location_pages(
        self,
        location_id: str,
        *,
        channel: str | None = None,
        contact_id: str | None = None,
        conversation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        sort_by: str = "createdAt",
        order: str = "desc",
        page_size: int = EXPORT_PAGE_MAX,
        cursor: str | None = None,
        email_bodies: bool = False,
    ) -> AsyncGenerator[LocationPage, None]:
        """Every page of a location's messages (``GET /conversations/messages/export``).

        Up to 500 messages a request, five times the messages endpoint's 100, and no
        conversation search first. ``channel`` (Call, SMS, Email, WhatsApp, Instagram,
        Facebook), ``contact_id`` and ``conversation_id`` filter; ``since``/``until``
        (timezone-aware, both inclusive) bound the ``sort_by`` field (``"createdAt"``
        or ``"updatedAt"``: the latter catches edits such as delivered/read as well as
        new messages); ``order`` is ``"desc"`` or ``"asc"``.

        Without ``channel`` it means *everything*: the endpoint leaves emails out unless
        asked for ``channel=Email``, so this makes two passes, every other message then
        the emails, and never delivers a message twice. Each page says its pass
        (:attr:`LocationPage.channel`); to resume, pass a page's
        :attr:`LocationPage.resume` as ``cursor=`` to the same call (same other
        arguments): it goes on after that page, in whichever pass.

        ``email_bodies=True``: each email message comes as a :class:`MessageWithEmails`
        (see :meth:`fan_out`).

        Same limiter, retries and errors as every other call.

        Raises:
            TypeError, ValueError: a bad argument, before any request.
            ghl_async.errors.LocationExportUnavailable: the first request was refused
                (401/403: the token lacks the scope; 404: not on this plan). Fall back
                to :meth:`iter_conversations` and :meth:`fan_out`.
            ghl_async.errors.PaginationError: the server repeated a cursor.
        """
        query = export_params(
            location_id,
            channel=channel,
            contact_id=contact_id,
            conversation_id=conversation_id,
            since=since,
            until=until,
            sort_by=sort_by,
            order=order,
            page_size=page_size,
        )
        export = LocationExport.of(query, cursor=cursor, email_bodies=email_bodies)
        return self._iter_location(export)

    async def _iter_location(self, export: LocationExport) -> AsyncGenerator[LocationPage, None]:
        """The pages of a checked export, pass after pass."""
        url = f"{self._base_url}/conversations/messages/export"
        location_id, channels, unfiltered = export.location_id, export.passes, export.unfiltered
        first = True
        for index, channel in enumerate(channels):
            query = dict(export.query)
            if channel is not None:
                query["channel"] = channel
            if index == 0 and export.start is not None:
                query["cursor"] = export.start
            pages = self._paged(
                url,
                query,
                decode_export_page,
                next_export_params,
                what=f"location {location_id} export",
                check_cursor=_check_export_cursor,
                on_page=self._count_page,
            )
            async with aclosing(pages):
                while True:
                    try:
                        page = await anext(pages)
                    except StopAsyncIteration:
                        break
                    except (
                        errors.AuthenticationError,
                        errors.PermissionDeniedError,
                        errors.NotFoundError,
                    ) as exc:
                        if not first:
                            raise
                        raise _unavailable(location_id, exc) from exc
                    first = False
                    messages = page.messages
                    kept = admitted(channel, messages) if unfiltered else messages
                    if export.email_bodies:
                        kept = await attach_emails(kept, self._email, self._max_concurrency)
                    following = page.next_cursor if not page.is_last else None
                    box = [
                        LocationPage(
                            messages=kept,
                            channel=channel,
                            next_cursor=following,
                            total=page.total,
                            resume=resume_token(channels, index, following, unfiltered),
                            trace_id=page.trace_id,
                            repaired=page.repaired,
                            dropped=page.dropped + len(messages) - len(kept),
                        )
                    ]
                    del page, messages, kept
                    yield hand_over(box)  # the frame keeps no page: see hand_over

    def iter_location_messages(
        self,
        location_id: str,
        *,
        channel: str | None = None,
        contact_id: str | None = None,
        conversation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        sort_by: str = "createdAt",
        order: str = "desc",
        page_size: int = EXPORT_PAGE_MAX,
        cursor: str | None = None,
        email_bodies: bool = False,
    ) -> AsyncGenerator[Message, None]:
        """Every message of a location, one at a time (see :meth:`iter_location_pages`).

        Without ``channel``, every message once: the non-email pass, then the emails::

            async for message in client.iter_location_messages(location_id):
                ...
        """
        pages = self.iter_location_pages(
            location_id,
            channel=channel,
            contact_id=contact_id,
            conversation_id=conversation_id,
            since=since,
            until=until,
            sort_by=sort_by,
            order=order,
            page_size=page_size,
            cursor=cursor,
            email_bodies=email_bodies,
        )
        return MessageStream(pages, _messages_of)


def _messages_of(page: MessagesPage | LocationPage) -> list[Message]:
    return page.messages


def _check_export_cursor(cursor: str) -> None:
    check_cursor(cursor, "the server's nextCursor")


def _unavailable(location_id: str, cause: errors.GHLError) -> errors.LocationExportUnavailable:
    reason = (
        "this plan has no such endpoint"
        if isinstance(cause, errors.NotFoundError)
        else "the token lacks the scope"
    )
    error = errors.LocationExportUnavailable(
        f"the location export (GET /conversations/messages/export) is not available for "
        f"location {location_id}: {reason} ({cause.message}); fall back to "
        "iter_conversations + fan_out",
        status=cause.status,
        body=cause.body,
        trace_id=cause.trace_id,
    )
    return error


def _check_server_cursor(cursor: str) -> None:
    check_id(cursor, "the server's lastMessageId")


async def _pages_only(
    items: AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None],
    on_page: PageHook | None,
) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]:
    async with aclosing(items):
        async for conversation_id, item in items:
            if on_page is not None and isinstance(item, MessagesPage):
                on_page(conversation_id, item)
            yield conversation_id, item
