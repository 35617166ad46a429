"""FakeHighLevel: the Conversations API as the live service behaves, in-process."""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import string
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web

from ghl_async._sansio import API_VERSION
from ghl_async.models import FilterType
from ghl_async.ratelimit import RateLimit
from ghl_async.testing._data import (
    StoredConversation,
    email_ids,
    make_conversations,
    make_email,
    store_conversations,
)
from ghl_async.testing._location import (
    MessageIndex,
    QueryError,
    Record,
    encode_cursor,
    iso_millis,
    parse_export_query,
    parse_instant,
)

__all__ = ["FakeHighLevel", "FakeStats", "Faults"]

_FILTERS = frozenset(member.value for member in FilterType)
REFUSALS = (401, 403, 404)
ROUTES = ("search", "messages", "export", "message", "email")
# The API routes: (name, path, handler method). In this order: the router takes the first
# match, so the export and email paths come before /conversations/messages/{id}.
API_ROUTES = (
    ("search", "/conversations/search", "_search"),
    ("export", "/conversations/messages/export", "_export"),
    ("email", "/conversations/messages/email/{id}", "_email"),
    ("message", "/conversations/messages/{id}", "_message"),
    ("messages", "/conversations/{conversation_id}/messages", "_messages"),
)
UNAUTHORIZED = "Invalid token: access token is invalid"
_ID_CHARS = string.ascii_letters + string.digits
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAULT_KINDS = ("server_error", "reset", "truncate", "slow", "html")
_HTML = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>cloudflare</p></body></html>"
)


@dataclass(frozen=True, slots=True)
class Faults:
    """Random faults, each a probability per request (seeded, so runs repeat).

    Attributes:
        server_error: a 500/502/503/504 (JSON or an HTML proxy page).
        reset: the connection is dropped before any reply.
        truncate: the body is cut off half way, the connection dropped.
        slow: the reply is held back ``slow_seconds``.
        html: a 200 whose body is a proxy's HTML page.
        slow_seconds: how long a slow reply takes.
        latency: seconds every reply is delayed by (to emulate a distant server).
    """

    server_error: float = 0.0
    reset: float = 0.0
    truncate: float = 0.0
    slow: float = 0.0
    html: float = 0.0
    slow_seconds: float = 2.0
    latency: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Faults:
        """Read ``"reset=0.02,server_error=0.05,latency=0.05"``."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, number = part.partition("=")
            if name not in cls.__dataclass_fields__:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_KINDS)}")
            values[name] = float(number)
        return cls(**values)


@dataclass(slots=True)
class FakeStats:
    """What the fake server saw.

    Attributes:
        requests: every request that reached a handler.
        served: replies with status 200 and a page.
        throttled: 429 replies (burst and daily).
        max_in_window: the most requests that arrived in any window of the budget's
            interval (the number a strict server compares with its budget).
        faults: injected faults by kind.
        by_conversation: requests per conversation id (the messages route).
        by_route: admitted requests per route: ``search``, ``messages``, ``export``,
            ``message``, ``email``.
        in_flight: requests being handled now.
        max_in_flight: the most requests handled at once.
        arrivals: ``(loop time, path)`` of the latest 100,000 requests, oldest first.
    """

    requests: int = 0
    served: int = 0
    throttled: int = 0
    max_in_window: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    by_conversation: Counter[str] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=100_000))


class _Window:
    """Arrival times within the last ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.times: deque[float] = deque()

    def count(self, now: float) -> int:
        times = self.times
        edge = now - self.interval
        while times and times[0] <= edge:
            times.popleft()
        return len(times)


class FakeHighLevel:
    """An in-process HighLevel for tests, benchmarks and demos, over a real socket.

    ::

        async with FakeHighLevel(conversations=50, seed=1) as fake:
            async with Client(fake.token, base_url=fake.url) as client:
                page = await client.get_messages(fake.conversation_ids[0])

    Routes (each shaped as HighLevel's OpenAPI file says):

    - ``GET /conversations/{id}/messages``: wrapped envelope, newest first,
      ``lastMessageId``/``nextPage``, ``limit`` 1..100, the ``type`` filter.
    - ``GET /conversations/search``: newest last message first, ``startAfterDate`` cursor.
    - ``GET /conversations/messages/export``: the whole location, cursor-paged
      (``limit`` 10..500, ``sortBy``, ``sortOrder``, ``channel``, ``conversationId``,
      ``contactId``, ``startDate``/``endDate`` as ISO 8601 or epoch ms, inclusive, on the
      ``sortBy`` field). As live: without ``channel`` it returns every message that is
      not an email; emails only come with ``channel=Email``.
    - ``GET /conversations/messages/{id}``: ``{"message": {...}}``; 404 when unknown.
    - ``GET /conversations/messages/email/{id}``: an email body
      (``GetEmailMessageResponseDto``) for each id in an email message's
      ``meta.email.messageIds``.
    - ``GET /_fake/stats``: what it saw, as JSON, for tests in another process (no auth,
      not counted).

    Every API route goes through one middleware: Bearer token and ``Version`` checks with
    the documented error bodies, the budget counted in a sliding window (all five
    ``X-RateLimit-*`` headers on every admitted reply, 429 past it), the daily budget,
    faults, in-flight counting and :attr:`stats`. The fake serves one location,
    :attr:`location_id`; other location ids are refused with 403. Its clock moves with
    :meth:`advance`, so a test of the window need not sleep. For an agency's many
    locations, each with its own budget, see :class:`~ghl_async.testing.FakeAgency`.

    Args:
        conversations: how many synthetic conversations, or your own mapping of
            conversation id to message dicts (newest first).
        seed: the seed for synthetic data and random faults.
        messages: messages per synthetic conversation: a count or a ``(low, high)`` range.
        rate_limit: the burst budget, counted in a sliding window.
        daily_limit: the daily budget.
        faults: random faults (:class:`Faults`).
        retry_after: send ``Retry-After`` on 429s.
        token: the token it accepts (a random one by default).
        accept_versions: ``Version`` header values it accepts.
        full_page_next: ``nextPage`` is true whenever a page is full (as the live
            service does), so a conversation of exactly N pages ends on an empty page.
        empty_page_next: an empty page still says ``nextPage: true`` (a quirk to test
            that clients stop on an empty page).
        location_id: the location every conversation belongs to.
        export_refusal: refuse the export route with this status, as the live service
            does for a token without the scope (401 or 403) or an older plan (404), so
            clients can test their fallback. ``None``: serve it.
        wrap_export: wrap the export reply as the messages route's is,
            ``{"messages": {"messages", "nextCursor", "total"}}`` (the live reply may be).
        export_overlap: each export page's cursor points this many messages before its
            end, so the next page repeats them (a hostile server; 0: pages meet exactly).
        host: the address to listen on.
        port: the port to listen on (0: a free one).
    """

    def __init__(
        self,
        conversations: int | Mapping[str, Sequence[Mapping[str, Any]]] = 20,
        *,
        seed: int = 0,
        messages: int | tuple[int, int] = (0, 150),
        rate_limit: RateLimit | None = None,
        daily_limit: int = 200_000,
        faults: Faults | None = None,
        retry_after: bool = True,
        token: str | None = None,
        accept_versions: Sequence[str] = (API_VERSION,),
        full_page_next: bool = True,
        empty_page_next: bool = False,
        location_id: str = "ve9EPM428h8vShlRW1KT",
        export_refusal: int | None = None,
        wrap_export: bool = False,
        export_overlap: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(conversations, int):
            conversations = make_conversations(
                conversations, seed=seed, messages=messages, location_id=location_id
            )
        if export_refusal is not None and export_refusal not in REFUSALS:
            raise ValueError(f"export_refusal must be one of {REFUSALS} or None")
        self._store: dict[str, StoredConversation] = store_conversations(conversations)
        self.rate_limit = rate_limit or RateLimit()
        self.daily_limit = daily_limit
        self.faults = faults or Faults()
        self.retry_after = retry_after
        self.token = token or "pit-" + secrets.token_hex(16)
        self.accept_versions = tuple(accept_versions)
        self.full_page_next = full_page_next
        self.empty_page_next = empty_page_next
        self.location_id = location_id
        self.export_refusal = export_refusal
        self.wrap_export = wrap_export
        self.export_overlap = export_overlap
        self.stats = FakeStats()
        self._host = host
        self._port = port
        self._rng = random.Random(seed)
        self._scripted: deque[tuple[str, str | None, str | None]] = deque()
        self._budget = _Window(self.rate_limit.interval)
        self._arrivals = _Window(self.rate_limit.interval)
        self._daily_used = 0
        self._trace = 0
        self._skew = 0.0  # advance() moves the clock forward by this much
        self._grants: dict[str, float] = {}  # extra tokens (OAuth) -> when each expires
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._encoder = msgspec.json.Encoder()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = random.Random(f"{seed}:added")  # apart from _rng: faults stay seeded
        self._last_stamp = 0
        # Built on first use: a fake that only serves conversations pays nothing for it.
        self._index_store = MessageIndex()
        self._emails_store: dict[str, str] = {}  # email id -> message id
        self._indexed = False

    # -- data --------------------------------------------------------------------

    @property
    def conversation_ids(self) -> list[str]:
        """Every conversation id, in a stable order."""
        return list(self._store)

    def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """The messages of a conversation as the server holds them, newest first."""
        return list(self._store[conversation_id].messages)

    @property
    def total_messages(self) -> int:
        """Messages across all conversations."""
        return sum(len(c.ids) for c in self._store.values())

    def message(self, message_id: str) -> dict[str, Any]:
        """One message as the server holds it (``KeyError`` when unknown)."""
        record = self._index.records[message_id]
        stored = self._store[record.conversation_id]
        return stored.messages[stored.index[message_id]]

    def email(self, email_id: str) -> dict[str, Any]:
        """The email body the email route serves for ``email_id`` (``KeyError`` if none)."""
        return make_email(self.message(self._emails[email_id]), email_id)

    @property
    def email_ids(self) -> list[str]:
        """Every id in the messages' ``meta.email.messageIds``: what the email route serves."""
        return list(self._emails)

    def add_message(
        self, conversation_id: str, *, when: datetime | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Add a message (an SMS unless ``fields`` say otherwise); return it.

        It is dated ``when`` (default: now, and always later than any message added or
        updated before), becomes the newest of its conversation, and moves the
        conversation to the top of search. An unknown ``conversation_id`` starts a new
        conversation. ``fields`` override the message's JSON fields, e.g.
        ``messageType="TYPE_EMAIL", type=3`` (an email gets ``meta.email.messageIds``).
        """
        stamp = self._stamp(when)
        stored = self._store.get(conversation_id)
        if stored is None:
            contact_id = str(fields.get("contactId") or self._new_id())
            stored = StoredConversation(conversation_id, contact_id, [], [], [], {}, [], stamp)
            self._store[conversation_id] = stored
        message: dict[str, Any] = {
            "id": self._new_id(),
            "type": 2,
            "messageType": "TYPE_SMS",
            "locationId": self.location_id,
            "contactId": stored.contact_id,
            "conversationId": conversation_id,
            "dateAdded": iso_millis(stamp),
            "direction": "inbound",
            "status": "delivered",
            "contentType": "text/plain",
            "body": "a message added by the test",
            "source": "app",
        }
        if fields.get("messageType") == "TYPE_EMAIL":
            message["meta"] = {"email": {"messageIds": [self._new_id()]}}
            message["contentType"] = "text/html"
        message.update(fields)
        created = self._created(message)
        position = 0  # newest first: before the first message not newer than this one
        while position < len(stored.ids) and self._created(stored.messages[position]) > created:
            position += 1
        stored.messages.insert(position, message)
        stored.encoded.insert(position, self._encoder.encode(message))
        stored.ids.insert(position, str(message["id"]))
        stored.kinds.insert(position, str(message.get("messageType", "")))
        stored.index = {message_id: i for i, message_id in enumerate(stored.ids)}
        stored.last_message_date = max(stored.last_message_date, created)
        self._record(stored, position)
        return message

    def update_message(
        self, message_id: str, *, when: datetime | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Edit a message (e.g. ``status="read"``) as the service would; return it.

        Its ``dateUpdated`` becomes ``when`` (default: now, later than any earlier add or
        update), so an export with ``sortBy=updatedAt`` finds it. Like the live service,
        an edit does not move the conversation in search (only a new message does).
        """
        record = self._index.records[message_id]
        stored = self._store[record.conversation_id]
        position = stored.index[message_id]
        message = stored.messages[position]
        message.update(fields)
        message["dateUpdated"] = iso_millis(self._stamp(when))
        stored.encoded[position] = self._encoder.encode(message)
        stored.kinds[position] = str(message.get("messageType", ""))
        self._record(stored, position)
        return message

    @property
    def _index(self) -> MessageIndex:
        self._build_index()
        return self._index_store

    @property
    def _emails(self) -> dict[str, str]:
        self._build_index()
        return self._emails_store

    def _build_index(self) -> None:
        if not self._indexed:
            self._indexed = True
            for stored in self._store.values():
                for position in range(len(stored.ids)):
                    self._record(stored, position)

    def _new_id(self) -> str:
        return "".join(self._ids.choices(_ID_CHARS, k=20))

    def _stamp(self, when: datetime | None) -> int:
        """Milliseconds for an add or an edit: ``when``, or now but after the last one."""
        if when is not None:
            return round(when.timestamp() * 1000)
        now = round(datetime.now().timestamp() * 1000)
        self._last_stamp = max(now, self._last_stamp + 1)
        return self._last_stamp

    @staticmethod
    def _created(message: Mapping[str, Any]) -> int:
        text = message.get("dateAdded")
        stamp = parse_instant(text) if isinstance(text, str) else None
        return stamp if stamp is not None else 0

    def _record(self, stored: StoredConversation, position: int) -> None:
        """Index one message for the export, single-message and email routes."""
        message = stored.messages[position]
        created = self._created(message)
        text = message.get("dateUpdated")
        updated = parse_instant(text) if isinstance(text, str) else None
        record = Record(
            id=stored.ids[position],
            conversation_id=stored.id,
            contact_id=str(message.get("contactId", stored.contact_id)),
            kind=stored.kinds[position],
            created=created,
            updated=created if updated is None else updated,
            encoded=stored.encoded[position],
        )
        self._index_store.put(record)
        for email_id in email_ids(message):
            self._emails_store[email_id] = record.id

    # -- control -----------------------------------------------------------------

    def inject(
        self,
        kind: str,
        count: int = 1,
        *,
        conversation_id: str | None = None,
        route: str | None = None,
        email_id: str | None = None,
    ) -> None:
        """Make the next ``count`` successful replies fail instead.

        Only replies for ``conversation_id`` (the messages route), for ``email_id`` (the
        email route) and on ``route`` (``search``, ``messages``, ``export``,
        ``message``, ``email``), if given.
        ``kind`` is one of ``server_error``, ``reset``, ``truncate``, ``slow``,
        ``html``, or an HTTP status such as ``"404"`` or ``"429"``.
        """
        if kind not in FAULT_KINDS and not (kind.isdigit() and len(kind) == 3):
            raise ValueError(f"unknown fault {kind!r}")
        if route is not None and route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; known: {', '.join(ROUTES)}")
        if email_id is not None:
            conversation_id, route = email_id, "email"
        for _ in range(count):
            self._scripted.append((kind, conversation_id, route))

    def _now(self) -> float:
        # The serving loop's clock, so spend() works from a test on another thread.
        loop = self._loop or asyncio.get_running_loop()
        return loop.time() + self._skew

    def advance(self, seconds: float) -> None:
        """Move the fake's clock ``seconds`` forward: budgets refill, tokens expire.

        Tests of timing move this clock rather than sleep.
        """
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._skew += seconds

    def _grant(self, token: str, expires_at: float) -> None:
        """Accept ``token`` too, until ``expires_at`` on :meth:`_now`'s clock (OAuth)."""
        self._grants[token] = expires_at

    def _accepts(self, authorization: str | None) -> bool:
        """Whether the ``Authorization`` header carries a token this location takes now."""
        if authorization is None or not authorization.startswith("Bearer "):
            return False
        token = authorization[len("Bearer ") :]
        if token == self.token:
            return True
        expires_at = self._grants.get(token)
        return expires_at is not None and self._now() < expires_at

    def spend(self, count: int) -> None:
        """Spend ``count`` of the burst budget now, as a neighbour would."""
        now = self._now()
        for _ in range(count):
            self._budget.times.append(now)

    def set_token(self, token: str) -> None:
        """Accept only ``token`` from now on (an expired one is refused with 401)."""
        self.token = token

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port``; :attr:`url` is set once this returns."""
        self._loop = asyncio.get_running_loop()
        app = web.Application(middlewares=[self._gate])
        router = app.router
        router.add_get("/_fake/stats", self._stats, name="fake_stats")
        for name, path, method in API_ROUTES:
            router.add_get(path, getattr(self, method), name=name)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeHighLevel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the middleware: what every route shares ------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Admission, rate accounting, latency, faults and in-flight counting, once."""
        route = request.match_info.route.name
        if route is None or route == "fake_stats":
            # Not an API route: unknown paths get aiohttp's plain 404, unchecked, uncounted.
            return await handler(request)
        stats = self.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            admitted = self._admit(request)
            if isinstance(admitted, web.Response):
                return admitted
            headers = admitted
            stats.by_route[route] += 1
            if self.faults.latency:
                await asyncio.sleep(self.faults.latency)
            response = await handler(request)
            response.headers.update(headers)
            if response.status != 200 or not isinstance(response, web.Response):
                return response
            target = request.match_info.get("conversation_id")
            if route == "email":
                target = request.match_info.get("id")
            fault = self._next_fault(target, route)
            if fault is not None:
                body = response.body if isinstance(response.body, bytes) else b""
                reply = await self._fault(request, fault, body, headers)
                if reply is not None:
                    return reply
            stats.served += 1
            return response
        finally:
            stats.in_flight -= 1

    def _json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=self._encoder.encode(payload),
            content_type="application/json",
            headers=headers,
        )

    def _error(self, status: int, message: str) -> web.Response:
        """The documented error body for ``status`` (422's message is a list)."""
        payload: dict[str, Any] = {"statusCode": status, "message": message}
        if status == 422:
            payload = {"statusCode": 422, "message": [message], "error": "Unprocessable Entity"}
        elif status in (401, 403):
            payload["error"] = "Unauthorized" if status == 401 else "Forbidden"
        return self._json(status, payload)

    def _rate_headers(self, now: float) -> dict[str, str]:
        used = self._budget.count(now)
        return {
            "X-RateLimit-Max": str(self.rate_limit.max_requests),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit.max_requests - used)),
            "X-RateLimit-Interval-Milliseconds": str(round(self.rate_limit.interval * 1000)),
            "X-RateLimit-Limit-Daily": str(self.daily_limit),
            "X-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self._daily_used)),
        }

    def _admit(self, request: web.Request) -> web.Response | dict[str, str]:
        """Auth, version and budget checks; the rate headers when admitted."""
        self.stats.requests += 1
        if not self._accepts(request.headers.get("Authorization")):
            return self._error(401, UNAUTHORIZED)
        if request.headers.get("Version") not in self.accept_versions:
            return self._error(400, "version header was not found")
        now = self._now()
        self.stats.arrivals.append((now, request.path))
        arrivals = self._arrivals
        arrivals.times.append(now)
        self.stats.max_in_window = max(self.stats.max_in_window, arrivals.count(now))
        if self._daily_used >= self.daily_limit:
            return self._throttled(now, daily=True)
        if self._budget.count(now) >= self.rate_limit.max_requests:
            return self._throttled(now, daily=False)
        self._budget.times.append(now)
        self._daily_used += 1
        return self._rate_headers(now)

    def _throttled(self, now: float, *, daily: bool) -> web.Response:
        self.stats.throttled += 1
        headers = self._rate_headers(now)
        if self.retry_after:
            if daily:
                wait = 3600.0
            else:
                wait = self._budget.times[0] + self.rate_limit.interval - now
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        message = "Daily rate limit exceeded" if daily else "Too many requests"
        return self._json(429, {"statusCode": 429, "message": message}, headers)

    def _next_fault(self, conversation_id: str | None, route: str) -> str | None:
        for i, (kind, target, on_route) in enumerate(self._scripted):
            if target in (None, conversation_id) and on_route in (None, route):
                del self._scripted[i]
                return kind
        faults = self.faults
        roll = self._rng.random()
        for kind in FAULT_KINDS:
            chance: float = getattr(faults, kind)
            if roll < chance:
                return kind
            roll -= chance
        return None

    async def _fault(
        self, request: web.Request, kind: str, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """Carry out an injected fault; ``None`` means reply normally (after a delay)."""
        self.stats.faults[kind] += 1
        if kind.isdigit():
            status = int(kind)
            if status == 429:
                self.stats.throttled += 1
                headers["Retry-After"] = "1"
            return self._json(
                status, {"statusCode": status, "message": f"injected {status}"}, headers
            )
        if kind == "server_error":
            status = self._rng.choice((500, 502, 503, 504))
            if status == 502:
                return web.Response(status=502, body=_HTML, content_type="text/html")
            return self._json(status, {"statusCode": status, "message": "Internal error"})
        if kind == "html":
            return web.Response(status=200, body=_HTML, content_type="text/html", headers=headers)
        transport = request.transport
        if kind == "reset":
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        if kind == "truncate":
            response = web.StreamResponse(
                headers={
                    **headers,
                    "Content-Length": str(len(body)),
                    "Content-Type": "application/json",
                }
            )
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if transport is not None:
                transport.abort()
            return response
        # slow
        await asyncio.sleep(self.faults.slow_seconds)
        return None

    def _trace_id(self) -> str:
        self._trace += 1
        return f"trace-{self._trace:08d}"

    def _location_refused(self, query: Mapping[str, str]) -> web.Response | None:
        if query.get("locationId") != self.location_id:
            return self._error(403, "The token does not have access to this location")
        return None

    # -- routes: each only computes its reply --------------------------------------

    async def _messages(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["conversation_id"]
        self.stats.by_conversation[conversation_id] += 1
        conversation = self._store.get(conversation_id)
        query = request.query
        limit = _limit(query)
        if limit is None:
            return self._error(422, "limit must be an integer between 1 and 100")
        kinds: frozenset[str] | None = None
        if "type" in query:
            kinds = frozenset(query["type"].split(","))
            if not kinds <= _FILTERS:
                return self._error(422, "type must be a valid message type")
        if conversation is None:
            return self._error(404, "Conversation not found")
        start = 0
        cursor = query.get("lastMessageId")
        if cursor is not None:
            position = conversation.index.get(cursor)
            if position is None:
                return self._error(400, "Invalid lastMessageId")
            start = position + 1
        chosen: list[int] = []
        more = False
        for i in range(start, len(conversation.ids)):
            if kinds is not None and conversation.kinds[i] not in kinds:
                continue
            if len(chosen) == limit:
                more = True
                break
            chosen.append(i)
        if self.full_page_next:
            next_page = len(chosen) == limit
        else:
            next_page = more
        if not chosen and self.empty_page_next:
            next_page = True
        last_id = conversation.ids[chosen[-1]] if chosen else None
        body = b"".join(
            (
                b'{"messages":{"lastMessageId":',
                self._encoder.encode(last_id),
                b',"nextPage":',
                b"true" if next_page else b"false",
                b',"messages":[',
                b",".join(conversation.encoded[i] for i in chosen),
                b']},"traceId":"',
                self._trace_id().encode(),
                b'"}',
            )
        )
        return web.Response(body=body, content_type="application/json")

    async def _export(self, request: web.Request) -> web.Response:
        if self.export_refusal == 404:
            return self._error(404, f"Cannot GET {request.path}")
        if self.export_refusal is not None:
            return self._error(self.export_refusal, "The token is not authorized for this scope.")
        query = request.query
        if "locationId" not in query:
            return self._error(422, "locationId should not be empty")
        refused = self._location_refused(query)
        if refused is not None:
            return refused
        try:
            checked = parse_export_query(query)
        except QueryError as exc:
            return self._error(exc.status, exc.message)
        records, next_cursor, total = self._index.page(checked)
        overlap = self.export_overlap
        if overlap and next_cursor is not None and len(records) > overlap:
            last = records[-1 - overlap]  # the next page starts again after this one
            key = last.created if checked.sort_by == "createdAt" else last.updated
            next_cursor = encode_cursor(checked.sort_by, checked.order, key, last.id)
        page = b"".join(
            (
                b'"messages":[',
                b",".join(record.encoded for record in records),
                b'],"nextCursor":',
                self._encoder.encode(next_cursor),
                b',"total":',
                str(total).encode(),
            )
        )
        if self.wrap_export:
            page = b'"messages":{' + page + b"}"
        trace = b',"traceId":"' + self._trace_id().encode() + b'"'
        return web.Response(body=b"{" + page + trace + b"}", content_type="application/json")

    async def _message(self, request: web.Request) -> web.Response:
        record = self._index.records.get(request.match_info["id"])
        if record is None:
            return self._error(404, "Message not found")
        body = b"".join(
            (
                b'{"message":',
                record.encoded,
                b',"traceId":"',
                self._trace_id().encode(),
                b'"}',
            )
        )
        return web.Response(body=body, content_type="application/json")

    async def _email(self, request: web.Request) -> web.Response:
        email_id = request.match_info["id"]
        if email_id not in self._emails:
            return self._error(404, "Email message not found")
        return self._json(200, self.email(email_id))

    async def _stats(self, request: web.Request) -> web.Response:
        """What the server saw, for tests in another process (no auth, not counted)."""
        return self._json(200, self.stats_json())

    def stats_json(self) -> dict[str, Any]:
        """What the server saw, as the ``/_fake/stats`` route serves it."""
        stats = self.stats
        return {
            "requests": stats.requests,
            "served": stats.served,
            "throttled": stats.throttled,
            "maxInWindow": stats.max_in_window,
            "maxInFlight": stats.max_in_flight,
            "faults": dict(stats.faults),
            "byRoute": dict(stats.by_route),
            "totalMessages": self.total_messages,
            "conversationIds": self.conversation_ids,
            "locationId": self.location_id,
        }

    async def _search(self, request: web.Request) -> web.Response:
        query = request.query
        refused = self._location_refused(query)
        if refused is not None:
            return refused
        limit = _limit(query)
        if limit is None:
            return self._error(422, "limit must be an integer between 1 and 100")
        # Newest last message first; the cursor is the last item's sort value.
        ordered = sorted(self._store.values(), key=lambda c: (-c.last_message_date, c.id))
        after = query.get("startAfterDate")
        if after is not None:
            try:
                bound = int(after)
            except ValueError:
                return self._error(400, "Invalid startAfterDate")
            ordered = [c for c in ordered if c.last_message_date < bound]
        batch = ordered[:limit]
        payload = {
            "conversations": [
                {
                    "id": c.id,
                    "contactId": c.contact_id,
                    "locationId": self.location_id,
                    "lastMessageDate": c.last_message_date,
                    "lastMessageType": c.kinds[0] if c.kinds else None,
                    "lastMessageBody": c.messages[0].get("body") if c.messages else None,
                    "unreadCount": len(c.ids) % 3,
                    "type": "TYPE_PHONE",
                    "sort": [c.last_message_date],
                    "someFutureField": True,
                }
                for c in batch
            ],
            "total": len(self._store),
            "traceId": self._trace_id(),
        }
        return self._json(200, payload)


def _limit(query: Mapping[str, str]) -> int | None:
    """The ``limit`` query value (default 20), or ``None`` when it is not 1..100."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        return None
    return limit if 1 <= limit <= 100 else None
