"""FakeHighLevel: the messages endpoint as the live service behaves, in-process."""

from __future__ import annotations

import asyncio
import math
import random
import secrets
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import msgspec
from aiohttp import web

from .._sansio import API_VERSION
from ..models import FilterType
from ..ratelimit import RateLimit
from ._data import StoredConversation, make_conversations, store_conversations

__all__ = ["FakeHighLevel", "FakeStats", "Faults"]

_FILTERS = frozenset(member.value for member in FilterType)
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
        by_conversation: requests per conversation id.
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

    It serves ``GET /conversations/{id}/messages`` (wrapped envelope, newest first,
    ``lastMessageId``/``nextPage``, ``limit`` 1..100, the ``type`` filter) and
    ``GET /conversations/search``, and ``GET /_fake/stats`` (what it saw, as JSON, for
    tests running in another process); checks the Bearer token and ``Version`` header with
    the documented error bodies; sends all five ``X-RateLimit-*`` headers; counts the
    budget in a sliding window and answers 429 past it; keeps a daily budget; and
    injects faults.

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
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(conversations, int):
            conversations = make_conversations(
                conversations, seed=seed, messages=messages, location_id=location_id
            )
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
        self.stats = FakeStats()
        self._host = host
        self._port = port
        self._rng = random.Random(seed)
        self._scripted: deque[tuple[str, str | None]] = deque()
        self._budget = _Window(self.rate_limit.interval)
        self._arrivals = _Window(self.rate_limit.interval)
        self._daily_used = 0
        self._trace = 0
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._encoder = msgspec.json.Encoder()

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

    # -- control -----------------------------------------------------------------

    def inject(self, kind: str, count: int = 1, *, conversation_id: str | None = None) -> None:
        """Make the next ``count`` requests (for ``conversation_id``, if given) fail.

        ``kind`` is one of ``server_error``, ``reset``, ``truncate``, ``slow``,
        ``html``, or an HTTP status such as ``"404"`` or ``"429"``.
        """
        if kind not in FAULT_KINDS and not (kind.isdigit() and len(kind) == 3):
            raise ValueError(f"unknown fault {kind!r}")
        for _ in range(count):
            self._scripted.append((kind, conversation_id))

    def spend(self, count: int) -> None:
        """Spend ``count`` of the burst budget now, as a neighbour would."""
        now = asyncio.get_running_loop().time()
        for _ in range(count):
            self._budget.times.append(now)

    def set_token(self, token: str) -> None:
        """Accept only ``token`` from now on (an expired one is refused with 401)."""
        self.token = token

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port``; :attr:`url` is set once this returns."""
        app = web.Application()
        app.router.add_get("/conversations/search", self._search)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_get("/conversations/{conversation_id}/messages", self._messages)
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

    # -- request handling --------------------------------------------------------

    def _json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=self._encoder.encode(payload),
            content_type="application/json",
            headers=headers,
        )

    def _unprocessable(self, message: str, headers: Mapping[str, str]) -> web.Response:
        # 422 is the one error whose message comes as a list.
        body = {"statusCode": 422, "message": [message], "error": "Unprocessable Entity"}
        return self._json(422, body, headers)

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
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._json(
                401,
                {
                    "statusCode": 401,
                    "message": "Invalid token: access token is invalid",
                    "error": "Unauthorized",
                },
            )
        if request.headers.get("Version") not in self.accept_versions:
            return self._json(400, {"statusCode": 400, "message": "version header was not found"})
        now = asyncio.get_running_loop().time()
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

    def _next_fault(self, conversation_id: str | None) -> str | None:
        for i, (kind, target) in enumerate(self._scripted):
            if target is None or target == conversation_id:
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

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._messages_reply(request)
        finally:
            stats.in_flight -= 1

    async def _messages_reply(self, request: web.Request) -> web.StreamResponse:
        admitted = self._admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        headers = admitted
        conversation_id = request.match_info["conversation_id"]
        self.stats.by_conversation[conversation_id] += 1
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        conversation = self._store.get(conversation_id)
        query = request.query
        limit = _limit(query)
        if limit is None:
            return self._unprocessable("limit must be an integer between 1 and 100", headers)
        kinds: frozenset[str] | None = None
        if "type" in query:
            kinds = frozenset(query["type"].split(","))
            if not kinds <= _FILTERS:
                return self._unprocessable("type must be a valid message type", headers)
        if conversation is None:
            return self._json(
                404, {"statusCode": 404, "message": "Conversation not found"}, headers
            )
        start = 0
        cursor = query.get("lastMessageId")
        if cursor is not None:
            position = conversation.index.get(cursor)
            if position is None:
                return self._json(
                    400, {"statusCode": 400, "message": "Invalid lastMessageId"}, headers
                )
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
        fault = self._next_fault(conversation_id)
        if fault is not None:
            reply = await self._fault(request, fault, body, headers)
            if reply is not None:
                return reply
        self.stats.served += 1
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def _stats(self, request: web.Request) -> web.Response:
        """What the server saw, for tests in another process (no auth, not counted)."""
        stats = self.stats
        return self._json(
            200,
            {
                "requests": stats.requests,
                "served": stats.served,
                "throttled": stats.throttled,
                "maxInWindow": stats.max_in_window,
                "maxInFlight": stats.max_in_flight,
                "faults": dict(stats.faults),
                "totalMessages": self.total_messages,
                "conversationIds": self.conversation_ids,
            },
        )

    async def _search(self, request: web.Request) -> web.StreamResponse:
        admitted = self._admit(request)
        if isinstance(admitted, web.Response):
            return admitted
        headers = admitted
        query = request.query
        if query.get("locationId") != self.location_id:
            return self._json(
                403,
                {
                    "statusCode": 403,
                    "message": "The token does not have access to this location",
                    "error": "Forbidden",
                },
                headers,
            )
        limit = _limit(query)
        if limit is None:
            return self._unprocessable("limit must be an integer between 1 and 100", headers)
        ordered = sorted(self._store.values(), key=lambda c: (-c.last_message_date, c.id))
        after = query.get("startAfterDate")
        if after is not None:
            try:
                bound = int(after)
            except ValueError:
                return self._json(
                    400, {"statusCode": 400, "message": "Invalid startAfterDate"}, headers
                )
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
        self.stats.served += 1
        return self._json(200, payload, headers)


def _limit(query: Mapping[str, str]) -> int | None:
    """The ``limit`` query value (default 20), or ``None`` when it is not 1..100."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        return None
    return limit if 1 <= limit <= 100 else None
