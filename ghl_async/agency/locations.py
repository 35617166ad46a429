"""An agency's locations in one process: a pool of per-location clients on one session.

HighLevel counts its budget per location, so an agency app reading K locations has K
budgets. :class:`Locations` keeps one :class:`~ghl_async.Client` per location (its own
token, its own limiter, its own small concurrency), made on first use, all sending
through one aiohttp session and connector that the pool opens and closes.

A fan-out reads the locations side by side (``locations_at_once`` at a time), every
location sending its pages into the one stream the consumer reads
(:mod:`ghl_async.agency.fanout`). A whole location is read through the export pipeline
(:func:`~ghl_async.export.export_location`: the location export route, up to 500
messages a request, falling back to search + conversation paging where the route is
refused), committing each page to a sink that hands it to the stream; conversations the
caller names are paged one by one, by the location's own few workers
(:func:`workers_per_location`). :meth:`Locations.export` runs the same pipeline into a
caller's sink (SQLite, PostgreSQL), one location per client and budget.

Every page of every location passes one shared cap (``max_pages``): a page takes a slot
before it is requested and gives it back when the consumer moves past it, so pages
requested, buffered or being read never number more than the cap, however many
locations run. Page requests at once are capped too, lower while the event loop is
CPU-bound (:mod:`._agency_inflight`): past what the process's CPU handles, more
requests at once only queue inside it, for the garbage collector to walk.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, overload

import anyio

from ghl_async import errors
from ghl_async._http.aiohttp_transport import DEFAULT_MAX_BODY_BYTES, AiohttpTransport
from ghl_async._http.auth import TokenProvider, TokenSource
from ghl_async._http.engine import Engine, Slots
from ghl_async._http.fanout import Handoff, Ids, IdSource, deliver
from ghl_async._http.lifecycle import Lifecycle
from ghl_async._http.paginate import hand_over
from ghl_async._validation import MAX_PAGE_SIZE, check_base_url, check_id, check_int, check_types
from ghl_async._version import __version__
from ghl_async.agency.fanout import (
    AgencyItem,
    AgencyRun,
    LocationWork,
    PageSource,
    Put,
    WholeLocation,
)
from ghl_async.agency.inflight import InFlight
from ghl_async.agency.tokens import MintedTokens, MintProgress
from ghl_async.client import DEFAULT_BASE_URL, Client
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.models import Message, MessagesPage
from ghl_async.oauth import (
    INSTALLED_LOCATIONS_PATH,
    OAUTH_VERSION,
    InstalledLocation,
    decode_installed_locations,
    installed_locations_params,
    next_skip,
)
from ghl_async.ratelimit import Limiter, LocalLimiter, RateLimit
from ghl_async.retry import RetryPolicy
from ghl_async.stats import ClientStats

if TYPE_CHECKING:  # aiohttp itself is imported by _transport.py only
    import aiohttp

__all__ = [
    "AgencyToken",
    "LocationTokenProvider",
    "Locations",
    "location_concurrency",
    "route_filter",
    "workers_per_location",
]

#: An async callable giving a location's current token (asked again after a 401).
LocationTokenProvider = Callable[[str], Awaitable[str]]

Types = Iterable[str] | str | None
#: ``(location_id, conversation_id or None, page or error)``: a fan-out's item.
PageItem = tuple[str, str | None, MessagesPage | errors.GHLError]
MessageItem = tuple[str, str | None, Message | errors.GHLError]

#: The export route's channel of each message type filter that has one. The channel also
#: admits kindred types (a campaign's SMS with ``TYPE_SMS``), which the filter drops.
ROUTE_CHANNELS: Final = {
    "TYPE_CALL": "Call",
    "TYPE_SMS": "SMS",
    "TYPE_EMAIL": "Email",
    "TYPE_WHATSAPP": "WhatsApp",
    "TYPE_INSTAGRAM": "Instagram",
    "TYPE_FACEBOOK": "Facebook",
}

# A round trip assumed when sizing a location's concurrency (live HighLevel answers a
# page in 100-300 ms; a loopback fake in a few ms).
DEFAULT_LATENCY = 0.1


def location_concurrency(
    rate_limit: RateLimit | None, *, latency: float = DEFAULT_LATENCY, ceiling: int = 16
) -> int:
    """Requests a location needs in flight to spend its budget: rate x round trip, plus one.

    More buys nothing: the limiter holds them back, each holding a connection and a page
    slot. HighLevel's 100 per 10 s with a 0.1 s round trip is 2; 100 per 1 s is 11.

    >>> location_concurrency(RateLimit(100, 10.0))
    2
    """
    budget = rate_limit if rate_limit is not None else RateLimit()
    return max(1, min(ceiling, math.ceil(budget.per_second * latency) + 1))


def workers_per_location(concurrency: int, max_pages: int, locations: int | None) -> int:
    """Conversations a location reads side by side in a fan-out of ``locations``.

    At most ``concurrency``, and no more than twice the location's share of the page
    cap: a worker that cannot get a page slot only waits, and costs memory and garbage
    collector work while it does (300 locations under a cap of 256: 2 each). With the
    number of locations unknown (an async source), ``concurrency``.

    >>> workers_per_location(11, 256, 300)
    2
    """
    if locations is None or locations < 1:
        return concurrency
    return max(1, min(concurrency, math.ceil(2 * max_pages / locations)))


def route_filter(type_filter: str | None) -> tuple[str | None, frozenset[str] | None]:
    """How a whole-location read honours a ``type`` filter: ``(channel, types kept)``.

    The export route filters by channel, not by message type, so the types are always
    matched on each message (``message_type``); where every type asked for belongs to
    one channel, that channel is asked for too, and the route sends only it (one pass,
    not two). ``None`` (no filter): every message, both passes.

    >>> route_filter("TYPE_EMAIL")
    ('Email', frozenset({'TYPE_EMAIL'}))
    >>> route_filter("TYPE_SMS,TYPE_CALL")[0] is None
    True
    """
    if type_filter is None:
        return None, None
    names = frozenset(type_filter.split(","))
    channels = {ROUTE_CHANNELS.get(name) for name in names}
    channel = channels.pop() if len(channels) == 1 else None
    return channel, names


@dataclass(frozen=True, slots=True)
class AgencyToken:
    """An agency (company) OAuth token, turned into location tokens on demand.

    Each location's token is minted through ``POST /oauth/locationToken``, kept until it
    expires and minted again after a 401. With ``app_id`` the pool can list the
    locations the app is installed in (``GET /oauth/installedLocations``).

    Attributes:
        token: the agency access token, or an async callable returning it (asked again
            after a 401: refresh it there, for instance with ``POST /oauth/token``).
        company_id: the agency's company id.
        app_id: the app's id, for listing its installed locations.
    """

    token: str | TokenProvider = field(repr=False)
    company_id: str
    app_id: str | None = None


class _PageCap:
    """The shared cap on pages in memory, and how many are held now and at most."""

    __slots__ = ("held", "peak", "semaphore")

    def __init__(self, size: int) -> None:
        self.semaphore = anyio.Semaphore(size)
        self.held = 0
        self.peak = 0


class _Slots:
    """One fan-out's share of the cap: what it took is given back when it ends."""

    __slots__ = ("cap", "held")

    def __init__(self, cap: _PageCap) -> None:
        self.cap = cap
        self.held = 0

    async def take(self) -> None:
        cap = self.cap
        await cap.semaphore.acquire()
        self.held += 1
        cap.held += 1
        if cap.held > cap.peak:
            cap.peak = cap.held

    def give(self) -> None:
        if self.held:
            self.held -= 1
            self.cap.held -= 1
            self.cap.semaphore.release()

    def give_all(self) -> None:
        while self.held:
            self.give()


class _Paced:
    """A sink the export pipeline commits to, keeping the pool's caps on its requests.

    Before each request of the pipeline (the first, and the one after each commit) it
    holds a slot of the page cap and one of the in-flight cap; a commit means the page
    is in, so the in-flight slot goes back, and the batch goes on (:meth:`_deliver`).
    :meth:`release` gives back what is held once the pipeline has returned.
    """

    __slots__ = ("_in_flight", "_page_slot", "_requesting", "_slots", "location_id")

    def __init__(self, location_id: str, slots: _Slots, in_flight: InFlight) -> None:
        self.location_id = location_id
        self._slots = slots
        self._in_flight = in_flight
        self._page_slot = False
        self._requesting = False

    async def __aenter__(self) -> _Paced:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def load(self, location_id: str) -> ExportState | None:
        """No state: every read starts from the location's first page."""
        return None

    async def commit(self, batch: Batch) -> None:
        """Hand ``batch`` on, then wait for room for the next request."""
        self._answered()
        await self._deliver(batch)
        await self.before_request()

    async def _deliver(self, batch: Batch) -> None:
        raise NotImplementedError

    async def before_request(self) -> None:
        """Wait for a page slot (unless one is held still) and an in-flight slot."""
        if not self._page_slot:
            await self._slots.take()
            self._page_slot = True
        await self._in_flight.take()
        self._requesting = True

    def _answered(self) -> None:
        if self._requesting:
            self._requesting = False
            self._in_flight.give()

    def release(self) -> None:
        """Give back the slots held (the pipeline has returned or failed)."""
        self._answered()
        if self._page_slot:
            self._page_slot = False
            self._slots.give()


class _Stream(_Paced):
    """A whole location's pages into a fan-out's stream, as ``(location_id, None, page)``.

    Each batch becomes one :class:`MessagesPage` (the messages ``keep`` admits, if any),
    which takes the page slot with it: the consumer's loop gives it back.
    """

    __slots__ = ("_keep", "_put")

    def __init__(
        self,
        location_id: str,
        slots: _Slots,
        in_flight: InFlight,
        put: Put,
        keep: frozenset[str] | None,
    ) -> None:
        super().__init__(location_id, slots, in_flight)
        self._put = put
        self._keep = keep

    async def _deliver(self, batch: Batch) -> None:
        keep = self._keep
        messages = (
            batch.messages
            if keep is None
            else [message for message in batch.messages if message.message_type in keep]
        )
        if not messages:  # nothing to hand over (a closing state, or all filtered out)
            return
        box = [MessagesPage(messages=messages, next_page=not batch.state.done)]
        del messages
        self._page_slot = False  # it goes with the page
        await self._put((self.location_id, None, hand_over(box)))


class _Mirror(_Paced):
    """A location's batches into the caller's sink, whose state the pipeline resumes from."""

    __slots__ = ("_sink",)

    def __init__(self, location_id: str, slots: _Slots, in_flight: InFlight, sink: Sink) -> None:
        super().__init__(location_id, slots, in_flight)
        self._sink = sink

    async def load(self, location_id: str) -> ExportState | None:
        """The caller's sink's state for the location."""
        return await self._sink.load(location_id)

    async def _deliver(self, batch: Batch) -> None:
        await self._sink.commit(batch)


class Locations(Lifecycle):
    """Many locations of an agency in one process: a client per location, one session.

    ::

        async with Locations(AgencyToken(token, company_id=..., app_id=...)) as agency:
            async for location_id, conversation_id, message in agency.fan_out_locations():
                ...

    Args:
        tokens: where each location's token comes from: a mapping ``location_id ->
            token`` (Private Integration Tokens), an async callable ``(location_id) ->
            token`` (asked again after a 401), or an :class:`AgencyToken`.
        base_url: the API root (as for :class:`~ghl_async.Client`).
        timeout: seconds one attempt may take.
        retry: how failures are retried, for every location and the OAuth routes.
        rate_limit: each location's budget cap (default: follow what the server
            announces, from HighLevel's 100 per 10 s); it also sizes the concurrency.
        concurrency: requests in flight per location (default
            :func:`location_concurrency` of ``rate_limit``).
        max_pages: pages in memory at once across all locations (requested, buffered
            or being read); also the shared connection pool's size, and the most page
            requests at once (fewer while the event loop is CPU-bound: see
            :attr:`in_flight_limit`).
        locations_at_once: locations read side by side in a fan-out or an
            :meth:`export`.
        limiter: a ``(location_id) -> Limiter`` factory (for instance one
            :class:`~ghl_async.ratelimit.redis.RedisLimiter` per location, shared across
            processes); by default each location has its own in-process limiter.
        session: a caller-owned :class:`aiohttp.ClientSession` for every location (never
            closed here); by default the pool opens one.
        allow_insecure: allow a plain-http ``base_url`` off loopback.
        user_agent: the ``User-Agent`` header.
        max_body_bytes: the largest reply body read.
        clock: the monotonic clock location tokens expire by (tests pass their own).
        mint_wait: with an :class:`AgencyToken`, the longest a location waits for its
            token to be minted (the agency's mints share a few slots and its budget, and
            queue); ``None`` (the default): its turn comes, however many are ahead.
            :attr:`mints` says how the queue stands.
        oauth_rate_limit: the agency's own budget for the OAuth routes (minting,
            listing); by default what the server announces, from HighLevel's 100 per
            10 s.
    """

    _closed_message = "the pool is closed: open it again or make a new one"
    _transport: AiohttpTransport  # the one session every location's client sends through

    def __init__(
        self,
        tokens: Mapping[str, str] | LocationTokenProvider | AgencyToken,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limit: RateLimit | None = None,
        concurrency: int | None = None,
        max_pages: int = 256,
        locations_at_once: int = 1000,
        limiter: Callable[[str], Limiter] | None = None,
        session: aiohttp.ClientSession | None = None,
        allow_insecure: bool = False,
        user_agent: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Callable[[], float] = time.monotonic,
        mint_wait: float | None = None,
        oauth_rate_limit: RateLimit | None = None,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        check_int(max_pages, "max_pages", 1)
        check_int(locations_at_once, "locations_at_once", 1)
        check_int(max_body_bytes, "max_body_bytes", 1)
        if concurrency is None:
            concurrency = location_concurrency(rate_limit)
        check_int(concurrency, "concurrency", 1)
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError("rate_limit must be a RateLimit")
        if isinstance(tokens, AgencyToken):
            check_id(tokens.company_id, "company_id")
            if tokens.app_id is not None and not tokens.app_id:
                raise ValueError("app_id must not be empty")
        elif not isinstance(tokens, Mapping) and not callable(tokens):
            raise TypeError("tokens must be a mapping, an async callable or an AgencyToken")
        self._tokens = tokens
        self._base_url = check_base_url(base_url, allow_insecure=allow_insecure)
        self._timeout = float(timeout)
        self._retry = retry if retry is not None else RetryPolicy()
        self._rate_limit = rate_limit
        if oauth_rate_limit is not None and not isinstance(oauth_rate_limit, RateLimit):
            raise TypeError("oauth_rate_limit must be a RateLimit")
        self._oauth_rate = oauth_rate_limit
        self._limiter_for = limiter
        self._allow_insecure = allow_insecure
        self._user_agent = user_agent or f"ghl-async/{__version__}"
        self._max_body = max_body_bytes
        self._clock = clock
        self.concurrency = concurrency
        """Requests in flight per location, at most."""
        self.max_pages = max_pages
        """Pages in memory at once across all locations, at most."""
        self.locations_at_once = locations_at_once
        """Locations a fan-out reads side by side, at most."""
        self.stats = ClientStats()
        """The pool's own requests (OAuth routes); each location's are in its client's."""
        transport = AiohttpTransport(
            session,
            max_connections=max_pages,
            timeout=self._timeout,
            stats=self.stats,
            max_body_bytes=max_body_bytes,
        )
        self._minted: MintedTokens | None = None
        self._oauth: Engine | None = None
        if isinstance(tokens, AgencyToken):
            self._oauth = Engine(
                auth=TokenSource(tokens.token, timeout=self._timeout),
                transport=transport,
                retry=self._retry,
                capacity=Slots(4),
                user_agent=self._user_agent,
                stats=self.stats,
                api_version=OAUTH_VERSION,
            )
            self._minted = MintedTokens(
                self._oauth,
                base_url=self._base_url,
                company_id=tokens.company_id,
                clock=clock,
                mint_wait=mint_wait,
            )
        self._clients: dict[str, Client] = {}
        self._cap = _PageCap(max_pages)
        self._in_flight = InFlight(max_pages)
        super().__init__(transport)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return (
            f"Locations(base_url={self._base_url!r}, clients={len(self._clients)}, "
            f"concurrency={self.concurrency}, max_pages={self.max_pages}, "
            f"tokens=<redacted>, {state})"
        )

    @property
    def is_open(self) -> bool:
        """True while the shared session is open."""
        return self._transport.is_open

    @property
    def pages_held(self) -> int:
        """Pages requested, buffered or being read right now (never above ``max_pages``)."""
        return self._cap.held

    @property
    def peak_pages_held(self) -> int:
        """The most pages held at once since the pool opened."""
        return self._cap.peak

    @property
    def in_flight_limit(self) -> int:
        """Page requests the pool runs at once now, at most (adapts; never above ``max_pages``).

        It shrinks while the event loop's thread is busy nearly all the time (more
        requests at once would only queue inside the process) and grows back while it
        has time to spare and requests wait for a slot.
        """
        return self._in_flight.limit

    @property
    def location_ids(self) -> list[str]:
        """The locations that have a client so far."""
        return list(self._clients)

    # -- life cycle (Lifecycle): open and aclose restated for the API reference, which
    # shows no inherited members

    async def open(self) -> None:
        """Open the shared session; ``async with`` (or the first use) does it for you."""
        await super().open()

    async def aclose(self) -> None:
        """Stop running fan-outs, close every location's client and the shared session."""
        await super().aclose()

    def _bind(self, loop: asyncio.AbstractEventLoop, *, moved: bool) -> None:
        if moved:
            # Clients, locks and slots belong to the old loop.
            self._clients.clear()
            self._cap = _PageCap(self.max_pages)
            self._in_flight = InFlight(self.max_pages)
            if self._minted is not None:
                self._minted.forget_loop()
        if self._oauth is not None:
            self._oauth.limiter = LocalLimiter(self._oauth_rate)
            self._oauth.capacity = Slots(4)
            self._oauth.auth.forget_loop()

    @property
    def mints(self) -> MintProgress | None:
        """With an :class:`AgencyToken`: tokens minted, locations waiting, mints failed."""
        return self._minted.progress if self._minted is not None else None

    async def _close_parts(self) -> None:
        if self._minted is not None:
            await self._minted.aclose()
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()

    # -- clients and tokens -------------------------------------------------------------

    def _token_for(self, location_id: str) -> str | TokenProvider:
        tokens = self._tokens
        if isinstance(tokens, AgencyToken):
            assert self._minted is not None
            return self._minted.provider(location_id)
        if isinstance(tokens, Mapping):
            token = tokens.get(location_id)
            if token is None:
                raise ValueError(f"no token for location {location_id}")
            return token
        provider = tokens

        async def token_of_location() -> str:
            return await provider(location_id)

        return token_of_location

    async def client(self, location_id: str) -> Client:
        """The client of ``location_id`` (made on first use, on the shared session)."""
        check_id(location_id, "location_id")
        await self._ready()
        return self._client(location_id)

    def _client(self, location_id: str) -> Client:
        client = self._clients.get(location_id)
        if client is None:
            client = Client(
                self._token_for(location_id),
                base_url=self._base_url,
                timeout=self._timeout,
                retry=self._retry,
                max_concurrency=self.concurrency,
                # The pool's session: every location on one connector. Read from the
                # transport the pool owns (the one aiohttp-speaking module opened it).
                session=self._transport._session,
                rate_limit=self._rate_limit,
                limiter=(
                    self._limiter_for(location_id)
                    if self._limiter_for is not None
                    else LocalLimiter(self._rate_limit)
                ),
                allow_insecure=self._allow_insecure,
                user_agent=self._user_agent,
                max_body_bytes=self._max_body,
            )
            self._clients[location_id] = client
        return client

    async def location_token(self, location_id: str) -> str:
        """``location_id``'s current token from the agency token (minted or cached).

        Raises:
            TypeError: the pool was not given an :class:`AgencyToken`.
            ghl_async.errors.GHLError: the server refused to mint it.
        """
        check_id(location_id, "location_id")
        if self._minted is None:
            raise TypeError("location tokens are minted only from an AgencyToken")
        await self._ready()
        return await self._minted.get(location_id)

    async def installed_locations(
        self, page_size: int = 100
    ) -> AsyncGenerator[InstalledLocation, None]:
        """Every location the app is installed in (``GET /oauth/installedLocations``).

        Each location once, however the pages repeat or overlap; the listing ends when
        ``count`` locations were seen, at an empty page, or at a page with nothing new
        (a server paging in a loop), so a wrong ``count`` never pages for ever.

        Raises:
            TypeError: the pool was not given an :class:`AgencyToken` with an ``app_id``.
        """
        check_int(page_size, "page_size", 1)
        tokens = self._tokens
        if not isinstance(tokens, AgencyToken) or tokens.app_id is None:
            raise TypeError("listing locations needs an AgencyToken with an app_id")
        await self._ready()
        assert self._oauth is not None
        skip: int | None = 0
        seen: set[str] = set()
        while skip is not None:
            params = installed_locations_params(
                tokens.company_id, tokens.app_id, skip=skip, limit=page_size
            )
            page = await self._oauth.get(
                self._base_url + INSTALLED_LOCATIONS_PATH,
                params,
                decode_installed_locations,
                what="installed locations",
            )
            fresh = [location for location in page.locations if location.id not in seen]
            for location in fresh:
                seen.add(location.id)
                yield location
            skip = next_skip(page, skip, new=len(fresh), seen=len(seen))

    async def _installed_ids(self) -> AsyncGenerator[str, None]:
        async with aclosing(self.installed_locations()) as locations:
            async for location in locations:
                yield location.id

    # -- fan-outs -----------------------------------------------------------------------

    async def _pages(
        self,
        client: Client,
        conversation_id: str,
        type_filter: str | None,
        page_size: int,
        slots: _Slots,
    ) -> AsyncGenerator[MessagesPage, None]:
        """One conversation's pages, each taking a slot of the shared cap before its request."""
        pages = client.iter_pages(conversation_id, type_filter, page_size)
        in_flight = self._in_flight
        async with aclosing(pages):
            while True:
                await slots.take()
                try:
                    await in_flight.take()
                    try:
                        page = await anext(pages)
                    finally:
                        in_flight.give()
                except StopAsyncIteration:
                    slots.give()
                    return
                except BaseException:
                    slots.give()
                    raise
                # Its slot is given back when the consumer moves past it.
                box = [page]
                del page
                yield hand_over(box)  # suspended while its worker waits: see hand_over

    async def _read_location(
        self,
        client: Client,
        location_id: str,
        channel: str | None,
        keep: frozenset[str] | None,
        slots: _Slots,
        put: Put,
    ) -> None:
        """A whole location into the fan-out's stream, through the export pipeline."""
        stream = _Stream(location_id, slots, self._in_flight, put, keep)
        try:
            await stream.before_request()
            await export_location(client, location_id, stream, channel=channel)
        finally:
            stream.release()

    def _work(
        self,
        plan: Mapping[str, IdSource] | None,
        type_filter: str | None,
        page_size: int,
        slots: _Slots,
    ) -> LocationWork:
        """How each location is read: its named conversations (``plan``), or whole."""
        channel, keep = route_filter(type_filter)

        def work(location_id: str) -> tuple[IdSource, PageSource] | WholeLocation:
            check_id(location_id, "location_id")
            client = self._client(location_id)
            if plan is None:
                return partial(self._read_location, client, location_id, channel, keep, slots)
            ids = plan[location_id]

            def pages(conversation_id: str) -> AsyncGenerator[MessagesPage, None]:
                check_id(conversation_id, "conversation_id")
                return self._pages(client, conversation_id, type_filter, page_size, slots)

            return ids, pages

        return work

    async def _run(
        self,
        work: Mapping[str, IdSource] | IdSource,
        types: Types,
        page_size: int,
        return_exceptions: bool,
    ) -> AsyncGenerator[PageItem, None]:
        await self._ready()
        type_filter = check_types(types)
        slots = _Slots(self._cap)
        self._in_flight.restart()
        plan = work if isinstance(work, Mapping) else None
        if plan is None and isinstance(work, (list, tuple)):
            work = list(work)  # a list: its length sizes each location's workers
        count = len(plan) if plan is not None else len(work) if isinstance(work, list) else None
        location_ids: IdSource = list(plan) if plan is not None else work
        location_work = self._work(plan, type_filter, page_size, slots)
        workers = workers_per_location(self.concurrency, self.max_pages, count)

        def producers(stream: Handoff[AgencyItem]) -> AgencyRun:
            return AgencyRun(
                location_ids,
                location_work,
                workers=workers,
                locations_at_once=self.locations_at_once,
                return_exceptions=return_exceptions,
                send=stream,
            )

        items = deliver(1, producers, self._spawn)
        try:
            async with aclosing(items):
                async for location_id, conversation_id, page in items:
                    if isinstance(page, MessagesPage):
                        try:
                            yield location_id, conversation_id, page
                        finally:
                            slots.give()
                    else:
                        yield location_id, conversation_id, page
                    del page
        finally:
            slots.give_all()

    @overload
    def fan_out_pages(
        self,
        pairs: Iterable[tuple[str, str]],
        *,
        locations: None = ...,
        types: Types = ...,
        page_size: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncGenerator[tuple[str, str, MessagesPage], None]: ...

    @overload
    def fan_out_pages(
        self,
        pairs: None = ...,
        *,
        locations: IdSource | None = ...,
        types: Types = ...,
        page_size: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncGenerator[tuple[str, str | None, MessagesPage], None]: ...

    @overload
    def fan_out_pages(
        self,
        pairs: Iterable[tuple[str, str]] | None = ...,
        *,
        locations: IdSource | None = ...,
        types: Types = ...,
        page_size: int = ...,
        return_exceptions: Literal[True],
    ) -> AsyncGenerator[PageItem, None]: ...

    def fan_out_pages(
        self,
        pairs: Iterable[tuple[str, str]] | None = None,
        *,
        locations: IdSource | None = None,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        return_exceptions: bool = False,
    ) -> AsyncGenerator[PageItem, None]:
        """Pages of many locations as ``(location_id, conversation_id, page)``.

        Give ``pairs`` of ``(location_id, conversation_id)`` (grouped by location first,
        so every location runs on its own budget side by side), or whole ``locations``,
        or neither: every location the app is installed in (an :class:`AgencyToken`
        with an ``app_id``).

        Pairs are read conversation by conversation (``page_size`` messages a request,
        each conversation's pages in the server's order), each item naming its
        conversation. A whole location is read through the location export route
        (:func:`~ghl_async.export.export_location`: up to 500 messages a request, every
        message but emails then the emails; where the route is refused, conversation
        search + paging instead), and each item is one page of the location with
        ``conversation_id`` ``None``: its messages span conversations, each naming its
        own (``message.conversation_id``). Such a page's ``next_page`` is ``False`` on
        the location's last page through the route (the fallback cannot tell: ``True``
        throughout); ``last_message_id`` is ``None``; ``page_size`` does not apply. In
        the fallback, a conversation that fails fails its location.

        ``types`` (message type filter names): for pairs the server filters; for whole
        locations each message is matched on its ``message_type``, and where every type
        asked for belongs to one of the route's channels that channel is asked for too
        (:func:`route_filter`). A page left empty by the filter is not handed out.

        With ``return_exceptions=True`` a failing conversation yields ``(location_id,
        conversation_id, error)`` and a failing location (its token refused, its search
        or export failed, its daily budget spent) yields ``(location_id, None or the
        conversation, error)``; the others go on. Otherwise the first such error stops
        everything and is raised. Breaking out of the loop stops every request in flight.
        """
        return self._fan_out_pages(pairs, locations, types, page_size, return_exceptions)

    def _fan_out_pages(
        self,
        pairs: Iterable[tuple[str, str]] | None,
        locations: IdSource | None,
        types: Types,
        page_size: int,
        return_exceptions: bool,
    ) -> AsyncGenerator[PageItem, None]:
        if pairs is not None and locations is not None:
            raise TypeError("give pairs or locations, not both")
        check_int(page_size, "page_size", 1, MAX_PAGE_SIZE)
        if isinstance(locations, (str, bytes)):
            raise TypeError("locations must be an iterable of ids, not a single str")
        work: Mapping[str, IdSource] | IdSource
        if pairs is not None:
            grouped: dict[str, list[str]] = {}
            for location_id, conversation_id in pairs:
                grouped.setdefault(location_id, []).append(conversation_id)
            work = dict(grouped)
        elif locations is not None:
            work = locations
        else:
            work = _Deferred(self._installed_ids)
        return self._run(work, types, page_size, return_exceptions)

    @overload
    def fan_out(
        self,
        pairs: Iterable[tuple[str, str]],
        *,
        locations: None = ...,
        types: Types = ...,
        page_size: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncGenerator[tuple[str, str, Message], None]: ...

    @overload
    def fan_out(
        self,
        pairs: None = ...,
        *,
        locations: IdSource | None = ...,
        types: Types = ...,
        page_size: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> AsyncGenerator[tuple[str, str | None, Message], None]: ...

    @overload
    def fan_out(
        self,
        pairs: Iterable[tuple[str, str]] | None = ...,
        *,
        locations: IdSource | None = ...,
        types: Types = ...,
        page_size: int = ...,
        return_exceptions: Literal[True],
    ) -> AsyncGenerator[MessageItem, None]: ...

    def fan_out(
        self,
        pairs: Iterable[tuple[str, str]] | None = None,
        *,
        locations: IdSource | None = None,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
        return_exceptions: bool = False,
    ) -> AsyncGenerator[MessageItem, None]:
        """Messages of many locations as ``(location_id, conversation_id, message)``.

        The same as :meth:`fan_out_pages`, one message at a time::

            async for location_id, conversation_id, message in agency.fan_out(pairs):
                ...

        A whole location's message carries its own conversation id
        (``message.conversation_id``, ``None`` only if the server left it out).
        """
        return _messages_only(
            self._fan_out_pages(pairs, locations, types, page_size, return_exceptions)
        )

    def fan_out_locations(
        self,
        location_ids: IdSource | None = None,
        *,
        types: Types = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncGenerator[tuple[str, str | None, Message], None]:
        """Every message of whole locations (default: every installed location).

        Shorthand for ``fan_out(locations=location_ids)``: each location through the
        location export route (or its fallback), each message with its own
        conversation id. With no ids it asks ``GET /oauth/installedLocations`` (an
        :class:`AgencyToken` with an ``app_id``). ``page_size`` is accepted as before
        and has no effect: the route reads up to 500 messages a request.
        """
        if location_ids is None:
            return self.fan_out(types=types, page_size=page_size)
        return self.fan_out(locations=location_ids, types=types, page_size=page_size)

    # -- mirrors ------------------------------------------------------------------------

    async def export(
        self,
        sink: Sink,
        location_ids: IdSource | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        channel: str | None = None,
        contact_id: str | None = None,
        email_bodies: bool = False,
        resume: bool = True,
        return_exceptions: bool = False,
        on_batch: Callable[[str, ExportResult], None] | None = None,
    ) -> dict[str, ExportResult | errors.GHLError]:
        """Mirror whole locations into one ``sink``, each resumable, exactly once.

        Each location runs :func:`~ghl_async.export.export_location` on its own client
        and budget, ``locations_at_once`` at a time (fewer while ``max_pages`` or the
        in-flight cap has no room: a location holds one page slot while it runs), into
        the one sink (open it first: ``async with sink_for(url) as sink``). A run stopped
        for any reason (an error, a cancel, a crash) goes on where the sink says when
        called again: the sink keeps each location's state with its rows.
        ``location_ids``: default every location the app is installed in (an
        :class:`AgencyToken` with an ``app_id``). The other arguments are
        :func:`~ghl_async.export.export_location`'s, for every location; ``on_batch`` is
        called with the location's id and its totals after every commit.

        ::

            async with sink_for("sqlite:///agency.db") as sink:
                results = await agency.export(sink, location_ids, return_exceptions=True)

        Returns:
            Each location's :class:`~ghl_async.export.ExportResult` or, with
            ``return_exceptions=True``, the :class:`~ghl_async.errors.GHLError` that
            stopped it (its token refused, its budget spent, the server failing), in the
            order the locations started.

        Raises:
            TypeError, ValueError: a bad argument, or a location exported into this
                sink with other arguments (pass ``resume=False``).
            ghl_async.errors.SinkError: the sink could not write (never one location's
                result: every location writes there); what was committed stands.
            ghl_async.errors.GHLError: without ``return_exceptions``, the first
                location's error; the other locations are stopped.
        """
        if not isinstance(sink, Sink):
            raise TypeError(f"sink must be a ghl_async.export Sink, not {type(sink).__name__}")
        if isinstance(location_ids, (str, bytes)):
            raise TypeError("location_ids must be an iterable of ids, not a single str")
        await self._ready()
        slots = _Slots(self._cap)
        self._in_flight.restart()
        ids = Ids(location_ids if location_ids is not None else _Deferred(self._installed_ids))
        started: list[str] = []
        seen: set[str] = set()
        results: dict[str, ExportResult | errors.GHLError] = {}
        failure: list[BaseException] = []

        async def mirror(location_id: str) -> ExportResult:
            client = self._client(location_id)
            target = _Mirror(location_id, slots, self._in_flight, sink)
            report = None if on_batch is None else partial(on_batch, location_id)
            try:
                await target.before_request()
                return await export_location(
                    client,
                    location_id,
                    target,
                    since=since,
                    until=until,
                    channel=channel,
                    contact_id=contact_id,
                    email_bodies=email_bodies,
                    resume=resume,
                    on_batch=report,
                )
            finally:
                target.release()

        async def loop(scope: anyio.CancelScope) -> None:
            try:
                while (location_id := await ids.next()) is not None:
                    check_id(location_id, "location_id")
                    if location_id in seen:
                        continue  # named twice: mirrored once
                    seen.add(location_id)
                    started.append(location_id)
                    try:
                        results[location_id] = await mirror(location_id)
                    except errors.SinkError:
                        raise
                    except errors.GHLError as exc:
                        if not return_exceptions:
                            raise
                        results[location_id] = exc
            except Exception as exc:
                # The first error stops the others; the caller gets it, never a group.
                if not failure:
                    failure.append(exc)
                scope.cancel()

        at_once = self.locations_at_once
        if isinstance(location_ids, (list, tuple, set, frozenset)):
            at_once = max(1, min(at_once, len(location_ids)))
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(at_once):
                    tg.start_soon(loop, tg.cancel_scope)
        finally:
            slots.give_all()
        if failure:
            raise failure[0]
        return {location_id: results[location_id] for location_id in started}


class _Deferred(AsyncIterable[str]):
    """An async id source made on first iteration (the installed locations)."""

    def __init__(self, make: Callable[[], AsyncGenerator[str, None]]) -> None:
        self._make = make

    def __aiter__(self) -> AsyncGenerator[str, None]:
        return self._make()


async def _messages_only(
    pages: AsyncGenerator[PageItem, None],
) -> AsyncGenerator[MessageItem, None]:
    async with aclosing(pages):
        async for location_id, conversation_id, item in pages:
            if isinstance(item, MessagesPage):
                if conversation_id is None:  # a whole location's page: each names its own
                    for message in item.messages:
                        yield location_id, message.conversation_id, message
                else:
                    for message in item.messages:
                        yield location_id, conversation_id, message
            else:
                yield location_id, conversation_id, item
